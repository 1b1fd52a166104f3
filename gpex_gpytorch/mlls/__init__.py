"""mlls"""
