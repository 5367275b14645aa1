# Sourced by the benchmark scripts: `bench_header` prints when, where and what was
# measured, as docs/benchmarks.md records it.
bench_header() {
  echo "date:    $(date -u +%Y-%m-%dT%H:%MZ)"
  echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
  echo "commit:  $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
}
