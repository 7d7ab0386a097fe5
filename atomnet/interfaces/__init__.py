"""Interfaces to simulation engines (OpenMM, ...); each submodule imports its engine only when imported."""
