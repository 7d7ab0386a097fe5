"""atomnet.models"""
