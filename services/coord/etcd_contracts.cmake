# The .proto files etcd's v3 gRPC stubs are generated from, where Debian installs them; stops with
# the package to install when one is missing. Included by CMakeLists.txt, and run alone
# (cmake -DPARLEY_GOCODE=DIR -P etcd_contracts.cmake) by tests/CMakeLists.txt's
# etcd_contracts_missing_test.
if(NOT PARLEY_GOCODE)
  set(PARLEY_GOCODE /usr/share/gocode/src CACHE PATH "Where Debian's golang-*-dev packages install")
endif()
set(etcd_sources ${PARLEY_GOCODE}/go.etcd.io/etcd)
set(gogo_sources ${PARLEY_GOCODE}/github.com/gogo/protobuf/gogoproto)
set(googleapis_sources
    ${PARLEY_GOCODE}/github.com/grpc-ecosystem/grpc-gateway/third_party/googleapis/google/api)
foreach(need
    "${etcd_sources}/etcdserver/etcdserverpb/rpc.proto|golang-etcd-server-dev"
    "${etcd_sources}/mvcc/mvccpb/kv.proto|golang-etcd-server-dev"
    "${etcd_sources}/auth/authpb/auth.proto|golang-etcd-server-dev"
    "${etcd_sources}/etcdserver/api/v3election/v3electionpb/v3election.proto|golang-etcd-server-dev"
    "${etcd_sources}/etcdserver/api/v3lock/v3lockpb/v3lock.proto|golang-etcd-server-dev"
    "${gogo_sources}/gogo.proto|golang-github-gogo-protobuf-dev"
    "${googleapis_sources}/annotations.proto|golang-github-grpc-ecosystem-grpc-gateway-dev"
    "${googleapis_sources}/http.proto|golang-github-grpc-ecosystem-grpc-gateway-dev")
  string(REPLACE "|" ";" pair "${need}")
  list(GET pair 0 file)
  list(GET pair 1 package)
  if(NOT EXISTS "${file}")
    message(FATAL_ERROR "etcd's gRPC contracts: ${file} is missing; install the Debian package "
                        "${package} (tools/setup installs it)")
  endif()
endforeach()

