"""Self-supervised methods, one module each, on the `Method` interface of `methods.base`."""
