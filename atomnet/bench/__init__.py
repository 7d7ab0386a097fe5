"""atomnet.bench"""
