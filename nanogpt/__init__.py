"""nanogpt"""
