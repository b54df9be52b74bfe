"""The only package that imports Ray: the sweep driver, its trainable, search spaces, the cluster."""
