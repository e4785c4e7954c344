"""The network-namespace lab used by ``make demo``, the tests and the benchmarks."""
