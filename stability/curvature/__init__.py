"""The Hessian spectrum engine: Hessian-vector products, Lanczos, the spectrum of a
loss over its data, and sharpness tracking."""
