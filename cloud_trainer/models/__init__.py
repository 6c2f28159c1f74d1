"""The models: the embedding dot-product model every run exports, the default factorized model
(EASE), new items' vectors from side features, and the per-shop choice of settings."""
