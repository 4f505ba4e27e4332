"""The cluster service through python3-grpcio (a gRPC implementation nobody here wrote).

usage: cluster_client.py PORT PROTO_DIR OUT_DIR WEIGHTS   -> prints a line per check
Generates the Python stubs of cluster.proto with grpc_tools into OUT_DIR first.
"""
import http.client
import json
import os
import signal
import subprocess
import sys
import time

port, proto_dir, out_dir, weights = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
subprocess.check_call([sys.executable, "-m", "grpc_tools.protoc", "-I", proto_dir, "--python_out", out_dir,
                       "--grpc_python_out", out_dir, os.path.join(proto_dir, "cluster.proto")])
sys.path.insert(0, out_dir)
import grpc  # noqa: E402
import cluster_pb2 as pb  # noqa: E402
import cluster_pb2_grpc as rpc  # noqa: E402

ch = grpc.insecure_channel("127.0.0.1:" + port)
grpc.channel_ready_future(ch).result(timeout=10)
stub = rpc.ClusterStub(ch)

# grpc.health.v1: no Python health package on Debian 12, so the raw bytes.
health = ch.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
assert health(b"", timeout=5) == b"\x08\x01", "health: not SERVING"
print("health: SERVING")


def expect_error(fn, req, code, words):
    try:
        fn(req, timeout=10)
    except grpc.RpcError as e:
        assert e.code() == code, "%s: %s (%s)" % (req, e.code(), e.details())
        assert words in e.details(), "%r does not mention %r" % (e.details(), words)
        print("refused %s: %s %s" % (type(req).__name__, e.code().name, e.details()))
        return
    raise AssertionError("accepted: %s" % req)


def wait_ready(wid, n, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        eps = [e for e in stub.ListEndpoints(pb.ListEndpointsRequest(workload=wid), timeout=10).endpoints if e.ready]
        if len(eps) == n:
            return eps
        time.sleep(0.2)
    raise AssertionError("%s: not %d ready endpoints: %s" % (wid, n, stub.GetWorkload(pb.WorkloadRef(id=wid))))


# Bad specs: refused with the field named, nothing created.
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="Bad_Id", model="m", replicas=1, weights=weights),
             grpc.StatusCode.INVALID_ARGUMENT, "id")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="w", model="m", replicas=0, weights=weights),
             grpc.StatusCode.INVALID_ARGUMENT, "replicas")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="w", model="m", replicas=1),
             grpc.StatusCode.INVALID_ARGUMENT, "weights")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="w", replicas=1, weights=weights),
             grpc.StatusCode.INVALID_ARGUMENT, "model")
expect_error(stub.GetWorkload, pb.WorkloadRef(id="nope"), grpc.StatusCode.NOT_FOUND, "nope")
assert len(stub.ListWorkloads(pb.ListWorkloadsRequest(), timeout=10).workloads) == 0, "a refused spec left a workload"

# Create -> replicas ready -> each answers a request.
st = stub.CreateWorkload(pb.WorkloadSpec(id="demo", model="demo", replicas=2, weights=weights), timeout=10)
assert len(st.replicas) == 2 and st.spec.generation >= 1, st
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="demo", model="demo", replicas=1, weights=weights),
             grpc.StatusCode.ALREADY_EXISTS, "demo")
eps = wait_ready("demo", 2)
for e in eps:
    host, p = e.address.split(":")
    c = http.client.HTTPConnection(host, int(p), timeout=10)
    c.request("POST", "/v1/chat/completions", json.dumps({"model": "demo", "max_tokens": 2,
                                                          "messages": [{"role": "user", "content": "hi"}]}))
    assert c.getresponse().status == 200
print("demo: 2 replicas ready and answering:", sorted(e.address for e in eps))

# Specs the driver refuses: missing weights, an unknown engine, a bad template or policy.
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="broken", model="b", replicas=1, weights="/no/such/weights"),
             grpc.StatusCode.INVALID_ARGUMENT, "weights")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="broken", model="b", replicas=1, weights=weights, engine="tgi"),
             grpc.StatusCode.INVALID_ARGUMENT, "engine")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="broken", model="b", replicas=1, weights=weights, engine="custom"),
             grpc.StatusCode.INVALID_ARGUMENT, "engine_cmd")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="broken", model="b", replicas=1, weights=weights, chat_template="x"),
             grpc.StatusCode.INVALID_ARGUMENT, "chat_template")
expect_error(stub.CreateWorkload, pb.WorkloadSpec(id="broken", model="b", replicas=1, weights=weights, policy="random"),
             grpc.StatusCode.INVALID_ARGUMENT, "policy")
assert [w.spec.id for w in stub.ListWorkloads(pb.ListWorkloadsRequest(), timeout=10).workloads] == ["demo"]

# Weights that pass the driver's check but fail the manager's compile stage (a shard is a
# dangling link): created, the replica reports the failure and the workload is degraded.
wdir = os.path.join(os.path.dirname(weights), "broken-weights")
os.makedirs(wdir, exist_ok=True)
if not os.path.islink(os.path.join(wdir, "shard-0")):
    os.symlink("/no/such/shard", os.path.join(wdir, "shard-0"))
stub.CreateWorkload(pb.WorkloadSpec(id="broken", model="broken", replicas=1, weights=wdir), timeout=10)
deadline = time.time() + 15
while time.time() < deadline:
    st = stub.GetWorkload(pb.WorkloadRef(id="broken"), timeout=10)
    r = st.replicas[0]
    if r.phase == pb.REPLICA_PHASE_FAILED:
        break
    time.sleep(0.2)
assert r.phase == pb.REPLICA_PHASE_FAILED and "No such file" in r.reason, r
assert st.phase == pb.WORKLOAD_PHASE_DEGRADED and "No such file" in st.message, st
print("broken: failed:", r.reason)
stub.DeleteWorkload(pb.WorkloadRef(id="broken"), timeout=10)

# A manager killed: the driver restarts it and the replica is ready again.
victim_status = stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10).replicas[0]
victim, old_address = victim_status.id, victim_status.address
# Only this cluster server's managers (their --state-dir): another stack on the machine
# may run a replica of the same name.
out = subprocess.run(["pgrep", "-f", "--", "ib-manager .*--replica %s .*--state-dir %s" % (victim, sys.argv[5])],
                     capture_output=True, text=True).stdout.split()
assert out, "no manager process for %s" % victim
for pid in out:
    os.kill(int(pid), signal.SIGKILL)
time.sleep(1)
eps = wait_ready("demo", 2)
r = [x for x in stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10).replicas if x.id == victim][0]
assert r.restarts >= 1, r
# The killed manager's engine went with it: its old address no longer answers.
host, p = old_address.split(":")
deadline = time.time() + 10
while time.time() < deadline:
    try:
        http.client.HTTPConnection(host, int(p), timeout=2).request("GET", "/health")
    except OSError:
        break
    time.sleep(0.2)
else:
    raise AssertionError("the engine of the killed manager still answers on %s" % old_address)
print("demo: manager of %s killed, its engine stopped, restarted (restarts=%d), ready again" % (victim, r.restarts))

# Scale in place: 2 -> 3 (same generation), then 3 -> 2 (the highest index drains, goes).
spec = stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10).spec
gen = spec.generation
spec.replicas = 3
st = stub.UpdateWorkload(spec, timeout=10)
assert st.spec.generation == gen and len(st.replicas) == 3, st
wait_ready("demo", 3)
spec.replicas = 2
st = stub.UpdateWorkload(spec, timeout=10)
assert [r.retiring for r in st.replicas] == [False, False, True], st
deadline = time.time() + 20
while time.time() < deadline and len(stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10).replicas) > 2:
    time.sleep(0.2)
st = stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10)
assert len(st.replicas) == 2 and st.phase == pb.WORKLOAD_PHASE_READY, st
print("demo: scaled to 3 and back to 2 in generation", gen)

# Rolling update (a new version): a new generation comes up while the old one serves; the
# old one is announced as draining only once every new replica is ready, then goes.
spec.version = "v2"
spec.engine_args = "--itl-ms 2"
st = stub.UpdateWorkload(spec, timeout=10)
assert st.spec.generation > gen and st.phase == pb.WORKLOAD_PHASE_ROLLING, st
seen_draining_with_new_ready = False
deadline = time.time() + 30
while time.time() < deadline:
    eps = stub.ListEndpoints(pb.ListEndpointsRequest(workload="demo"), timeout=10).endpoints
    old = [e for e in eps if e.generation == gen]
    new = [e for e in eps if e.generation == st.spec.generation]
    serving = [e for e in eps if e.ready and not e.draining]
    assert serving, "no replica serving during the rolling update: %s" % eps
    if any(e.draining for e in old):
        assert len([e for e in new if e.ready]) == 2, "old drains before the new generation is ready: %s" % eps
        seen_draining_with_new_ready = True
    if not old:
        break
    time.sleep(0.05)
assert seen_draining_with_new_ready and not old, eps
st = stub.GetWorkload(pb.WorkloadRef(id="demo"), timeout=10)
assert st.phase == pb.WORKLOAD_PHASE_READY and st.spec.version == "v2" and len(st.replicas) == 2, st
print("demo: rolled to generation %d (v2); the old generation drained once the new one was ready" % st.spec.generation)
expect_error(stub.UpdateWorkload, pb.WorkloadSpec(id="nope", model="m", replicas=1, weights=weights),
             grpc.StatusCode.NOT_FOUND, "nope")
spec.engine = "nope"
expect_error(stub.UpdateWorkload, spec, grpc.StatusCode.INVALID_ARGUMENT, "engine")

# Delete: its endpoints go.
stub.DeleteWorkload(pb.WorkloadRef(id="demo"), timeout=10)
assert not stub.ListEndpoints(pb.ListEndpointsRequest(), timeout=10).endpoints
print("demo: deleted")
