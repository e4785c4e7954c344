"""The overlay extension: tables, endpoint veths, the dataplane view and reconciler, IPsec."""
