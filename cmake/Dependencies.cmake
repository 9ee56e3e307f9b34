# All dependencies come from Debian packages installed by scripts/setup.sh.
find_package(Threads REQUIRED)
find_package(absl REQUIRED)
find_package(BLAS REQUIRED)   # OpenBLAS (libopenblas-dev)
find_package(PkgConfig REQUIRED)
pkg_check_modules(XXHASH REQUIRED IMPORTED_TARGET libxxhash)
find_package(GTest)
find_package(benchmark)
find_package(faiss)
find_package(CLI11 REQUIRED)
find_package(RocksDB REQUIRED)  # librocksdb-dev: RocksDB::rocksdb(-shared), storage/

# The cache service (proto/, service/, bench/kv_service_bench.cc).
find_package(Protobuf REQUIRED)
find_package(gRPC CONFIG REQUIRED)  # gRPC::grpc++, grpc++_reflection, grpc_cpp_plugin
find_package(yaml-cpp REQUIRED)     # target yaml-cpp
pkg_check_modules(HTTPLIB REQUIRED IMPORTED_TARGET cpp-httplib)
pkg_check_modules(HIREDIS REQUIRED IMPORTED_TARGET hiredis)
