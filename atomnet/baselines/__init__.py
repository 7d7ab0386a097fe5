"""atomnet.baselines"""
