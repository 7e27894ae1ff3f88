// SPDX-License-Identifier: Apache-2.0
// wirekey's native addon: libbpf's concepts (object, program, link, map, ring
// buffer) for the controller, and nothing about policy.
#include <bpf/libbpf.h>
#include <napi.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>

#include "errors.h"
#include "link.h"
#include "map.h"
#include "object.h"
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

Napi::Value LibbpfVersion(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), libbpf_version_string());
}

}  // namespace

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  InstallLibbpfLog();
  Object::Init(env, exports);
  Map::Init(env, exports);
  Link::Init(env, exports);
  RingBuffer::Init(env, exports);
  exports.Set("openPinnedMap", Napi::Function::New(env, Map::OpenPinned));
  exports.Set("netnsCookie", Napi::Function::New(env, NetnsCookie));
  exports.Set("libbpfVersion", Napi::Function::New(env, LibbpfVersion));
  return exports;
}

}  // namespace wirekey

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return wirekey::Init(env, exports); }

NODE_API_MODULE(wirekey_native, InitAddon)
