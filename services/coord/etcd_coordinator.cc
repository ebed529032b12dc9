#include "services/coord/etcd_coordinator.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "base/status_macros.h"
#include "etcd/etcdserver/api/v3election/v3electionpb/v3election.grpc.pb.h"
#include "etcd/etcdserver/api/v3lock/v3lockpb/v3lock.grpc.pb.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"

namespace parley::coord {
namespace {

// As services/transport/status_convert.h (the code numbers agree), with what etcd was asked.
absl::Status FromGrpc(const grpc::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat("etcd ", what, ": ", s.error_message()));
}

absl::StatusOr<std::string> ReadFile(const std::string& path, absl::string_view field) {
  std::ifstream in(path);
  if (!in) return absl::NotFoundError(absl::StrCat("etcd ", field, ": cannot read ", path));
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// The end of a key range: every key that starts with `prefix`.
std::string PrefixEnd(std::string prefix) {
  for (int i = static_cast<int>(prefix.size()) - 1; i >= 0; --i) {
    if (static_cast<unsigned char>(prefix[i]) < 0xff) {
      ++prefix[i];
      prefix.resize(i + 1);
      return prefix;
    }
  }
  return std::string(1, '\0');  // all keys
}

class EtcdCoordinator : public Coordinator {
 public:
  EtcdCoordinator(std::shared_ptr<grpc::Channel> channel, absl::Duration call_timeout)
      : kv_(etcdserverpb::KV::NewStub(channel)),
        lease_(etcdserverpb::Lease::NewStub(channel)),
        election_(v3electionpb::Election::NewStub(channel)),
        lock_(v3lockpb::Lock::NewStub(channel)),
        call_timeout_(call_timeout) {}

  absl::StatusOr<LeaseId> GrantLease(absl::Duration ttl) override {
    etcdserverpb::LeaseGrantRequest request;
    request.set_ttl(std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)))));
    etcdserverpb::LeaseGrantResponse response;
    RETURN_IF_ERROR(Unary("lease grant", absl::Now() + call_timeout_, [&](grpc::ClientContext* c) {
      return lease_->LeaseGrant(c, request, &response);
    }));
    if (!response.error().empty()) {
      return absl::UnavailableError(absl::StrCat("etcd lease grant: ", response.error()));
    }
    return response.id();
  }

  absl::StatusOr<absl::Duration> KeepAlive(LeaseId lease) override {
    grpc::ClientContext context;
    ASSIGN_OR_RETURN(auto scope, Enter(&context, absl::Now() + call_timeout_));
    auto stream = lease_->LeaseKeepAlive(&context);
    etcdserverpb::LeaseKeepAliveRequest request;
    request.set_id(lease);
    etcdserverpb::LeaseKeepAliveResponse response;
    const bool exchanged = stream->Write(request) && stream->Read(&response);
    stream->WritesDone();
    if (!exchanged) {
      context.TryCancel();
      (void)stream->Finish();
      return absl::UnavailableError(
          absl::StrCat("etcd lease keepalive of ", lease, ": the stream ended before an answer"));
    }
    context.TryCancel();
    (void)stream->Finish();
    if (response.ttl() <= 0) {
      return absl::NotFoundError(absl::StrCat("etcd lease ", lease, " has expired"));
    }
    return absl::Seconds(response.ttl());
  }

  absl::Status RevokeLease(LeaseId lease) override {
    etcdserverpb::LeaseRevokeRequest request;
    request.set_id(lease);
    etcdserverpb::LeaseRevokeResponse response;
    return Unary("lease revoke", absl::Now() + call_timeout_, [&](grpc::ClientContext* c) {
      return lease_->LeaseRevoke(c, request, &response);
    });
  }

  absl::StatusOr<LeaderKey> Campaign(const std::string& election, const std::string& value,
                                     LeaseId lease, absl::Time deadline) override {
    v3electionpb::CampaignRequest request;
    request.set_name(election);
    request.set_lease(lease);
    request.set_value(value);
    v3electionpb::CampaignResponse response;
    RETURN_IF_ERROR(Unary("campaign for " + election, deadline, [&](grpc::ClientContext* c) {
      return election_->Campaign(c, request, &response);
    }));
    LeaderKey key{election, response.leader().key(), response.leader().rev(),
                  response.leader().lease()};
    // The election service answers once every earlier candidate's key is gone; if this
    // candidate's own lease ended meanwhile, its key is gone too and it does not lead.
    ASSIGN_OR_RETURN(const bool leads, StillLeads(key));
    if (!leads) {
      return absl::FailedPreconditionError(
          absl::StrCat("etcd campaign for ", election, ": the lease ended before it was won"));
    }
    return key;
  }

  absl::StatusOr<std::optional<Leader>> CurrentLeader(const std::string& election) override {
    etcdserverpb::RangeRequest request;
    const std::string prefix = election + "/";
    request.set_key(prefix);
    request.set_range_end(PrefixEnd(prefix));
    request.set_sort_target(etcdserverpb::RangeRequest::CREATE);
    request.set_sort_order(etcdserverpb::RangeRequest::ASCEND);
    request.set_limit(1);
    ASSIGN_OR_RETURN(auto response, Range(request, "leader of " + election));
    if (response.kvs_size() == 0) return std::nullopt;
    return Leader{response.kvs(0).value(), response.kvs(0).create_revision()};
  }

  absl::StatusOr<Leader> WaitForLeader(const std::string& election, int64_t after_term,
                                       absl::Time deadline) override {
    grpc::ClientContext context;
    ASSIGN_OR_RETURN(auto scope, Enter(&context, deadline));
    v3electionpb::LeaderRequest request;
    request.set_name(election);
    auto stream = election_->Observe(&context, request);
    v3electionpb::LeaderResponse response;
    while (stream->Read(&response)) {
      if (response.kv().create_revision() > after_term) {
        context.TryCancel();
        (void)stream->Finish();
        return Leader{response.kv().value(), response.kv().create_revision()};
      }
    }
    return FromGrpc(stream->Finish(), "observe " + election);
  }

  absl::StatusOr<bool> StillLeads(const LeaderKey& key) override {
    etcdserverpb::RangeRequest request;
    request.set_key(key.key);
    ASSIGN_OR_RETURN(auto response, Range(request, "leader key " + key.key));
    return response.kvs_size() == 1 && response.kvs(0).create_revision() == key.term;
  }

  absl::Status Resign(const LeaderKey& key) override {
    // A delete guarded by the create revision: a later key of the same name is not touched.
    etcdserverpb::TxnRequest request;
    auto* compare = request.add_compare();
    compare->set_key(key.key);
    compare->set_target(etcdserverpb::Compare::CREATE);
    compare->set_result(etcdserverpb::Compare::EQUAL);
    compare->set_create_revision(key.term);
    request.add_success()->mutable_request_delete_range()->set_key(key.key);
    etcdserverpb::TxnResponse response;
    return Unary("resign " + key.key, absl::Now() + call_timeout_,
                 [&](grpc::ClientContext* c) { return kv_->Txn(c, request, &response); });
  }

  absl::StatusOr<std::optional<std::string>> Get(const std::string& key) override {
    etcdserverpb::RangeRequest request;
    request.set_key(key);
    ASSIGN_OR_RETURN(auto response, Range(request, "get " + key));
    if (response.kvs_size() == 0) return std::nullopt;
    return response.kvs(0).value();
  }

  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value,
                              LeaseId lease) override {
    etcdserverpb::PutRequest request;
    request.set_key(key);
    request.set_value(value);
    request.set_lease(lease);
    etcdserverpb::PutResponse response;
    RETURN_IF_ERROR(Unary("put " + key, absl::Now() + call_timeout_,
                          [&](grpc::ClientContext* c) { return kv_->Put(c, request, &response); }));
    return response.header().revision();
  }

  absl::StatusOr<LockKey> Lock(const std::string& name, LeaseId lease,
                               absl::Time deadline) override {
    v3lockpb::LockRequest request;
    request.set_name(name);
    request.set_lease(lease);
    v3lockpb::LockResponse response;
    RETURN_IF_ERROR(Unary("lock " + name, deadline, [&](grpc::ClientContext* c) {
      return lock_->Lock(c, request, &response);
    }));
    etcdserverpb::RangeRequest range;
    range.set_key(response.key());
    ASSIGN_OR_RETURN(auto held, Range(range, "lock key " + response.key()));
    if (held.kvs_size() != 1) {
      return absl::FailedPreconditionError(
          absl::StrCat("etcd lock ", name, ": the lease ended before the lock was granted"));
    }
    return LockKey{name, response.key(), held.kvs(0).create_revision()};
  }

  absl::Status Unlock(const LockKey& key) override {
    v3lockpb::UnlockRequest request;
    request.set_key(key.key);
    v3lockpb::UnlockResponse response;
    return Unary("unlock " + key.name, absl::Now() + call_timeout_,
                 [&](grpc::ClientContext* c) { return lock_->Unlock(c, request, &response); });
  }

  void Close() override {
    absl::MutexLock lock(&mu_);
    closed_ = true;
    for (grpc::ClientContext* context : in_flight_) context->TryCancel();
  }

 private:
  // Registers a call's context so Close() can cancel it; unregisters when it goes.
  class Scope {
   public:
    Scope(EtcdCoordinator* owner, grpc::ClientContext* context)
        : owner_(owner), context_(context) {}
    Scope(Scope&& other) : owner_(std::exchange(other.owner_, nullptr)), context_(other.context_) {}
    Scope(const Scope&) = delete;
    ~Scope() {
      if (owner_ == nullptr) return;
      absl::MutexLock lock(&owner_->mu_);
      owner_->in_flight_.erase(context_);
    }

   private:
    EtcdCoordinator* owner_;
    grpc::ClientContext* context_;
  };

  absl::StatusOr<Scope> Enter(grpc::ClientContext* context, absl::Time deadline) {
    context->set_deadline(absl::ToChronoTime(deadline));
    absl::MutexLock lock(&mu_);
    if (closed_) return absl::CancelledError("etcd: the coordinator is closed");
    in_flight_.insert(context);
    return Scope(this, context);
  }

  template <typename Call>
  absl::Status Unary(absl::string_view what, absl::Time deadline, Call call) {
    grpc::ClientContext context;
    ASSIGN_OR_RETURN(auto scope, Enter(&context, deadline));
    return FromGrpc(call(&context), what);
  }

  absl::StatusOr<etcdserverpb::RangeResponse> Range(const etcdserverpb::RangeRequest& request,
                                                    absl::string_view what) {
    etcdserverpb::RangeResponse response;
    RETURN_IF_ERROR(Unary(what, absl::Now() + call_timeout_, [&](grpc::ClientContext* c) {
      return kv_->Range(c, request, &response);  // serializable = false: linearizable
    }));
    return response;
  }

  std::unique_ptr<etcdserverpb::KV::Stub> kv_;
  std::unique_ptr<etcdserverpb::Lease::Stub> lease_;
  std::unique_ptr<v3electionpb::Election::Stub> election_;
  std::unique_ptr<v3lockpb::Lock::Stub> lock_;
  const absl::Duration call_timeout_;

  absl::Mutex mu_;
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::flat_hash_set<grpc::ClientContext*> in_flight_ ABSL_GUARDED_BY(mu_);
};

// The channel's target: one endpoint as it is, several as one ipv4: address list (pick_first
// moves to the next member when one goes).
absl::StatusOr<std::string> Target(const std::vector<std::string>& endpoints) {
  if (endpoints.empty()) return absl::InvalidArgumentError("etcd endpoints: none given");
  for (const std::string& e : endpoints) {
    if (e.empty() || absl::StrContains(e, "://") || !absl::StrContains(e, ":")) {
      return absl::InvalidArgumentError(absl::StrCat("etcd endpoints: '", e, "' is not host:port"));
    }
  }
  if (endpoints.size() == 1) return endpoints[0];
  return absl::StrCat("ipv4:", absl::StrJoin(endpoints, ","));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Coordinator>> NewEtcdCoordinator(const EtcdOptions& options) {
  ASSIGN_OR_RETURN(const std::string target, Target(options.endpoints));
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  if (options.ca_file.empty()) {
    credentials = grpc::InsecureChannelCredentials();
  } else {
    if (options.cert_file.empty() != options.key_file.empty()) {
      return absl::InvalidArgumentError("etcd cert_file and key_file: give both or neither");
    }
    grpc::SslCredentialsOptions ssl;
    ASSIGN_OR_RETURN(ssl.pem_root_certs, ReadFile(options.ca_file, "ca_file"));
    if (!options.cert_file.empty()) {
      ASSIGN_OR_RETURN(ssl.pem_cert_chain, ReadFile(options.cert_file, "cert_file"));
      ASSIGN_OR_RETURN(ssl.pem_private_key, ReadFile(options.key_file, "key_file"));
    }
    credentials = grpc::SslCredentials(ssl);
  }
  if (options.call_timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("etcd call_timeout: must be positive");
  }
  // Reconnect within a second: a lease TTL is a few seconds, and gRPC's default backoff (up to
  // two minutes) would let leases lapse while a member restarts.
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return std::make_unique<EtcdCoordinator>(grpc::CreateCustomChannel(target, credentials, args),
                                           options.call_timeout);
}

}  // namespace parley::coord
