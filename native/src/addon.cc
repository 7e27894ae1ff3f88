// SPDX-License-Identifier: Apache-2.0
// wirekey's native addon: libbpf's concepts (object, program, link, map, ring
// buffer) for the controller, and nothing about policy.
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <napi.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "addon_data.h"
#include "errors.h"
#include "link.h"
#include "map.h"
#include "object.h"
#include "probe.h"
#include "ringbuf.h"

#ifndef SO_NETNS_COOKIE
#define SO_NETNS_COOKIE 71
#endif

namespace wirekey {
namespace {

// netnsCookie(): the cookie of the caller's network namespace (kernel >= 5.14),
// the value bpf_get_netns_cookie() returns for sockets created there.
Napi::Value NetnsCookie(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw MakeError(env, "socket", errno);
  uint64_t cookie = 0;
  socklen_t len = sizeof(cookie);
  int rc = getsockopt(fd, SOL_SOCKET, SO_NETNS_COOKIE, &cookie, &len);
  int err = errno;
  close(fd);
  if (rc < 0) throw MakeError(env, "getsockopt(SO_NETNS_COOKIE)", err);
  return Napi::BigInt::New(env, cookie);
}

// lockFile(path, exclusive): opens (creating, 0600) and flock()s path without
// waiting: an exclusive lock for the holder, which keeps the returned fd open
// for as long as it holds it; a shared one to ask whether anybody holds it
// (the caller closes it at once). Throws with errno EWOULDBLOCK when held.
Napi::Value LockFile(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBoolean()) throw Napi::TypeError::New(env, "lockFile(path, exclusive)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) throw MakeError(env, "open " + path, errno);
  if (flock(fd, (info[1].As<Napi::Boolean>().Value() ? LOCK_EX : LOCK_SH) | LOCK_NB)) {
    int err = errno;
    close(fd);
    throw MakeError(env, "flock " + path, err);
  }
  return Napi::Number::New(env, fd);
}

// setDumpable(bool): prctl(PR_SET_DUMPABLE). A process that is not dumpable
// writes no core dump, and its /proc/PID/mem, environ, fds and ptrace are
// closed to other processes of its uid that lack CAP_SYS_PTRACE.
Napi::Value SetDumpable(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsBoolean()) throw Napi::TypeError::New(env, "setDumpable(boolean)");
  if (prctl(PR_SET_DUMPABLE, info[0].As<Napi::Boolean>().Value() ? 1 : 0, 0, 0, 0)) {
    throw MakeError(env, "prctl(PR_SET_DUMPABLE)", errno);
  }
  return env.Undefined();
}

// dumpable(): prctl(PR_GET_DUMPABLE): 0, 1 (SUID_DUMP_USER) or 2 (SUID_DUMP_ROOT).
Napi::Value Dumpable(const Napi::CallbackInfo& info) {
  int v = prctl(PR_GET_DUMPABLE, 0, 0, 0, 0);
  if (v < 0) throw MakeError(info.Env(), "prctl(PR_GET_DUMPABLE)", errno);
  return Napi::Number::New(info.Env(), v);
}

// programMapIds(progId): the ids of the maps a loaded program uses.
Napi::Value ProgramMapIds(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "programMapIds(progId)");
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  int fd = bpf_prog_get_fd_by_id(id);
  if (fd < 0) throw MakeError(env, "open program id " + std::to_string(id), errno);
  bpf_prog_info pinfo = {};
  __u32 len = sizeof(pinfo);
  int rc = bpf_obj_get_info_by_fd(fd, &pinfo, &len);
  std::vector<__u32> ids(pinfo.nr_map_ids);
  if (rc == 0 && !ids.empty()) {
    __u32 n = pinfo.nr_map_ids;
    pinfo = {};
    pinfo.nr_map_ids = n;
    pinfo.map_ids = reinterpret_cast<__u64>(ids.data());
    len = sizeof(pinfo);
    rc = bpf_obj_get_info_by_fd(fd, &pinfo, &len);
    if (pinfo.nr_map_ids < ids.size()) ids.resize(pinfo.nr_map_ids);
  }
  int err = errno;
  close(fd);
  if (rc) throw MakeError(env, "info of program id " + std::to_string(id), err);
  Napi::Array out = Napi::Array::New(env);
  for (size_t i = 0; i < ids.size(); i++) out.Set(static_cast<uint32_t>(i), ids[i]);
  return out;
}

// sdNotify(socketPath, message): sends `message` as one datagram to the
// service manager's notification socket ($NOTIFY_SOCKET; a leading '@' names
// an abstract address), as sd_notify(3) does; Node has no datagram Unix
// sockets. Never blocks (MSG_DONTWAIT): a watchdog ping must not stall the
// event loop. The kernel adds the sender's credentials, which systemd reads
// to apply NotifyAccess=. Throws with errno (EAGAIN: the manager's queue is
// full; ENOENT/ECONNREFUSED: no manager listens).
Napi::Value SdNotify(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) throw Napi::TypeError::New(env, "sdNotify(socketPath, message)");
  std::string path = info[0].As<Napi::String>().Utf8Value();
  std::string message = info[1].As<Napi::String>().Utf8Value();
  sockaddr_un addr = {};
  addr.sun_family = AF_UNIX;
  if (path.empty() || (path[0] != '/' && path[0] != '@')) throw Napi::TypeError::New(env, "sdNotify: the socket must be an absolute path or an @abstract name");
  if (path.size() >= sizeof(addr.sun_path)) throw Napi::TypeError::New(env, "sdNotify: socket path too long");
  memcpy(addr.sun_path, path.data(), path.size());
  if (path[0] == '@') addr.sun_path[0] = '\0';
  // Abstract names are not NUL-terminated: the length says where they end.
  socklen_t len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + path.size() + (path[0] == '@' ? 0 : 1));
  ResetLibbpfLog();  // no libbpf message of an earlier call in this error
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw MakeError(env, "socket(AF_UNIX, SOCK_DGRAM)", errno);
  ssize_t n = sendto(fd, message.data(), message.size(), MSG_DONTWAIT | MSG_NOSIGNAL, reinterpret_cast<sockaddr*>(&addr), len);
  int err = errno;
  close(fd);
  if (n < 0) throw MakeError(env, "send to " + path, err);
  return env.Undefined();
}

// reusePortListener(address, port): a TCP socket bound to address:port with
// SO_REUSEPORT and listening, non-blocking, close-on-exec; its fd. Each
// proxy worker thread listens on one of its own, so that the kernel spreads
// connections across them (Node 20 has no reusePort listen option). An IPv6
// address is bound IPv6-only. Throws with errno (EADDRINUSE, EINVAL...).
Napi::Value ReusePortListener(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) throw Napi::TypeError::New(env, "reusePortListener(address, port)");
  std::string address = info[0].As<Napi::String>().Utf8Value();
  int64_t port = info[1].As<Napi::Number>().Int64Value();
  if (port < 0 || port > 65535) throw Napi::RangeError::New(env, "reusePortListener: port out of range");
  sockaddr_storage ss = {};
  socklen_t len;
  int family;
  auto* v4 = reinterpret_cast<sockaddr_in*>(&ss);
  auto* v6 = reinterpret_cast<sockaddr_in6*>(&ss);
  if (inet_pton(AF_INET, address.c_str(), &v4->sin_addr) == 1) {
    family = v4->sin_family = AF_INET;
    v4->sin_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*v4);
  } else if (inet_pton(AF_INET6, address.c_str(), &v6->sin6_addr) == 1) {
    family = v6->sin6_family = AF_INET6;
    v6->sin6_port = htons(static_cast<uint16_t>(port));
    len = sizeof(*v6);
  } else {
    throw Napi::TypeError::New(env, "reusePortListener: not an IP address");
  }
  int fd = socket(family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) throw MakeError(env, "socket", errno);
  int one = 1;
  const char* step = "setsockopt(SO_REUSEPORT)";
  bool ok = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) == 0 &&
            setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == 0 &&
            (family != AF_INET6 || setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)) == 0);
  if (ok) {
    step = "bind";
    ok = bind(fd, reinterpret_cast<sockaddr*>(&ss), len) == 0;
  }
  if (ok) {
    step = "listen";
    ok = listen(fd, 511) == 0;
  }
  if (!ok) {
    int err = errno;
    close(fd);
    throw MakeError(env, std::string(step) + " " + address + " port " + std::to_string(port), err);
  }
  return Napi::Number::New(env, fd);
}

Napi::Value LibbpfVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), libbpf_version_string());
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfLog();
  env.SetInstanceData(new AddonData());
  Object::Init(env, exports);
  Map::Init(env, exports);
  Link::Init(env, exports);
  RingBuffer::Init(env, exports);
  InitProbes(env, exports);
  exports.Set("openPinnedMap", Napi::Function::New(env, Map::OpenPinned));
  exports.Set("openMapById", Napi::Function::New(env, Map::OpenById));
  exports.Set("programMapIds", Napi::Function::New(env, ProgramMapIds));
  exports.Set("setDumpable", Napi::Function::New(env, SetDumpable));
  exports.Set("lockFile", Napi::Function::New(env, LockFile));
  exports.Set("dumpable", Napi::Function::New(env, Dumpable));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie));
  exports.Set("sdNotify", Napi::Function::New(env, SdNotify));
  exports.Set("reusePortListener", Napi::Function::New(env, ReusePortListener));
  exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion));
  return exports;
}

}  // namespace wirekey

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return wirekey::Init(env, exports); }

NODE_API_MODULE(wirekey_native, InitAddon)
