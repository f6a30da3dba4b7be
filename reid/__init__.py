"""Video person re-identification with AP3D networks, built on ``ap3d_kernels``."""
