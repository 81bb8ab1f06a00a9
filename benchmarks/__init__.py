"""Speed, memory and scaling benchmarks of the zoo's kernels against peer libraries."""
