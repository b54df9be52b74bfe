"""The only package that imports Ray: the sweep driver, its trainable, search spaces, the cluster, the
final stage. A sweep's state, which needs no Ray, is `satune.sweep`'s."""
