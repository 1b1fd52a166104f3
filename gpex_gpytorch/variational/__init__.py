"""variational"""
