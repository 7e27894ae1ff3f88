// SPDX-License-Identifier: Apache-2.0
// RingBuffer: the consumer side of a BPF_MAP_TYPE_RINGBUF map (libbpf's
// struct ring_buffer), read on the Node event loop: its epoll fd is watched
// by a uv_poll_t, and records are copied out with ring_buffer__consume,
// which never blocks. Nothing here waits in epoll_wait.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>
#include <uv.h>

#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

namespace wirekey {

class RingBuffer;

// What must outlive the JavaScript object: libuv owns the poll handle
// until its close callback runs, and env teardown may close it first.
struct RingCore {
  uv_poll_t poll;
  ring_buffer* rb = nullptr;
  int map_fd = -1;  // our own dup of the map's fd
  napi_env env = nullptr;
  napi_async_cleanup_hook_handle hook = nullptr;
  std::unique_ptr<Napi::AsyncContext> async;
  RingBuffer* owner = nullptr;  // null once the JavaScript object is gone
  bool closing = false;
  // Filled by the sample callback during one consume: records back to back.
  std::vector<uint8_t> data;
  std::vector<uint32_t> sizes;
  size_t limit = 0;
};

class RingBuffer : public Napi::ObjectWrap<RingBuffer> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit RingBuffer(const Napi::CallbackInfo& info);
  ~RingBuffer() override;

  // Most records handed over by one consume: a flood cannot hold the
  // JavaScript thread; the rest is read on the next turn of the loop.
  static constexpr size_t kBatch = 4096;

 private:
  Napi::Value Consume(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);

  // Reads up to kBatch records; returns how many, and the error if the ring
  // could not be read. Calls no JavaScript.
  static int Drain(RingCore* core, size_t limit);
  // The records read by Drain: one Buffer (a copy) and a Uint32Array of sizes.
  static std::pair<Napi::Value, Napi::Value> Records(Napi::Env env, RingCore* core);
  static void OnPoll(uv_poll_t* handle, int status, int events);
  static void OnTeardown(napi_async_cleanup_hook_handle handle, void* arg);
  static void Shutdown(RingCore* core);
  static void OnClosed(uv_handle_t* handle);

  Napi::FunctionReference callback_;
  RingCore* core_ = nullptr;
};

}  // namespace wirekey
