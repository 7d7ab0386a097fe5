"""atomnet.nn"""
