"""atomnet.training"""
