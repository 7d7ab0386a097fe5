"""atomnet.explain"""
