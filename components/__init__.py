"""KFP v2 components, one folder per pipeline step; each calls one function in ``lmforge``."""
