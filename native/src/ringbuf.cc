// SPDX-License-Identifier: Apache-2.0
#include "ringbuf.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <utility>

#include "errors.h"

namespace wirekey {

namespace {

constexpr uint32_t kRingbufType = 27;  // BPF_MAP_TYPE_RINGBUF

// libbpf's sample callback: copies the record out and stops the consume at
// the batch limit (a negative return; libbpf counts the record consumed).
int Sample(void* ctx, void* data, size_t size) {
  auto* core = static_cast<RingCore*>(ctx);
  const auto* bytes = static_cast<const uint8_t*>(data);
  core->data.insert(core->data.end(), bytes, bytes + size);
  core->sizes.push_back(static_cast<uint32_t>(size));
  return core->sizes.size() >= core->limit ? -ECANCELED : 0;
}

}  // namespace

void RingBuffer::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "RingBuffer",
                                    {
                                        InstanceMethod("consume", &RingBuffer::Consume),
                                        InstanceMethod("close", &RingBuffer::Close),
                                        InstanceMethod("info", &RingBuffer::Info),
                                        StaticValue("batch", Napi::Number::New(env, kBatch)),
                                    });
  exports.Set("RingBuffer", ctor);
}

// new RingBuffer(map, callback): consumes a BPF_MAP_TYPE_RINGBUF map of a
// loaded object. callback(data: Buffer, sizes: Uint32Array, error?: Error)
// runs on the event loop whenever the kernel wakes the reader, and from
// consume(): `data` is a copy of the records read at once, back to back,
// `sizes` their lengths. One copy per batch, not per record: a busy ring
// delivers tens of thousands of records a second. The ring keeps its own fd
// of the map, so closing the object does not stop it.
RingBuffer::RingBuffer(const Napi::CallbackInfo& info) : Napi::ObjectWrap<RingBuffer>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsObject() || !info[1].IsFunction()) {
    throw Napi::TypeError::New(env, "RingBuffer(map, callback)");
  }
  Napi::Object map = info[0].As<Napi::Object>();
  Napi::Value info_fn = map.Get("info");
  if (!info_fn.IsFunction()) throw Napi::TypeError::New(env, "RingBuffer: map must be a BpfMap");
  Napi::Object minfo = info_fn.As<Napi::Function>().Call(map, {}).As<Napi::Object>();
  std::string name = minfo.Get("name").ToString();
  uint32_t type = minfo.Get("type").ToNumber().Uint32Value();
  int fd = minfo.Get("fd").ToNumber().Int32Value();
  if (type != kRingbufType) throw Napi::TypeError::New(env, "RingBuffer: " + name + " is not a ring buffer map");
  if (fd < 0) throw Napi::Error::New(env, "RingBuffer: " + name + " is not loaded");

  auto core = std::make_unique<RingCore>();
  core->env = env;
  core->map_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
  if (core->map_fd < 0) throw MakeError(env, "dup the fd of " + name, errno);
  ResetLibbpfLog();
  core->rb = ring_buffer__new(core->map_fd, Sample, core.get(), nullptr);
  if (!core->rb) {
    int err = errno;
    close(core->map_fd);
    throw MakeError(env, "ring buffer on " + name, err);
  }
  uv_loop_t* loop = nullptr;
  napi_status st = napi_get_uv_event_loop(env, &loop);
  int err = st == napi_ok ? uv_poll_init(loop, &core->poll, ring_buffer__epoll_fd(core->rb)) : UV_EINVAL;
  if (err) {
    ring_buffer__free(core->rb);
    close(core->map_fd);
    throw Napi::Error::New(env, std::string("ring buffer on ") + name + ": uv_poll_init: " + uv_strerror(err));
  }
  // From here the poll handle exists and can only be freed through uv_close.
  core->poll.data = core.get();
  core->owner = this;
  core_ = core.release();
  // A ring buffer never keeps the process alive by itself, as an unref'd timer.
  uv_unref(reinterpret_cast<uv_handle_t*>(&core_->poll));
  if (napi_add_async_cleanup_hook(env, OnTeardown, core_, &core_->hook) != napi_ok) core_->hook = nullptr;
  core_->async = std::make_unique<Napi::AsyncContext>(env, "wirekey:RingBuffer", Value());
  callback_ = Napi::Persistent(info[1].As<Napi::Function>());
  err = uv_poll_start(&core_->poll, UV_READABLE, OnPoll);
  if (err) {
    Shutdown(core_);
    throw Napi::Error::New(env, std::string("ring buffer on ") + name + ": uv_poll_start: " + uv_strerror(err));
  }
}

// Collected while open (or torn down with its environment): stops the poll
// and frees the ring. The poll handle itself is freed by libuv's close callback.
RingBuffer::~RingBuffer() {
  if (core_) {
    core_->owner = nullptr;
    Shutdown(core_);
    core_ = nullptr;
  }
}

int RingBuffer::Drain(RingCore* core, size_t limit) {
  core->data.clear();
  core->sizes.clear();
  core->limit = limit;
  int n = ring_buffer__consume(core->rb);
  if (n == -ECANCELED && core->sizes.size() >= limit) return static_cast<int>(core->sizes.size());
  return n < 0 ? n : static_cast<int>(core->sizes.size());
}

std::pair<Napi::Value, Napi::Value> RingBuffer::Records(Napi::Env env, RingCore* core) {
  Napi::Buffer<uint8_t> data = Napi::Buffer<uint8_t>::Copy(env, core->data.data(), core->data.size());
  Napi::Uint32Array sizes = Napi::Uint32Array::New(env, core->sizes.size());
  if (!core->sizes.empty()) memcpy(sizes.Data(), core->sizes.data(), core->sizes.size() * sizeof(uint32_t));
  core->data.clear();
  core->sizes.clear();
  return {data, sizes};
}

// The kernel woke the reader: hand what is there to the callback, as a
// callback from the event loop (async hooks, microtasks, uncaught exceptions).
void RingBuffer::OnPoll(uv_poll_t* handle, int status, int events) {
  auto* core = static_cast<RingCore*>(handle->data);
  if (core->closing || !core->owner) return;
  RingBuffer* self = core->owner;
  Napi::Env env(core->env);
  Napi::HandleScope scope(env);
  Napi::Value error = env.Undefined();
  if (status < 0) {
    // Not expected from an epoll fd; stop rather than spin. consume() still works.
    uv_poll_stop(handle);
    Napi::Error e = Napi::Error::New(env, std::string("ring buffer poll: ") + uv_strerror(status));
    e.Set("errno", Napi::Number::New(env, -status));
    error = e.Value();
    core->data.clear();
    core->sizes.clear();
  } else {
    int n = Drain(core, kBatch);
    if (n == 0) return;
    if (n < 0) error = MakeError(env, "consume ring buffer", n).Value();
  }
  auto records = Records(env, core);
  try {
    self->callback_.MakeCallback(self->Value(), {records.first, records.second, error}, *core->async);
  } catch (const Napi::Error& e) {
    napi_fatal_exception(env, e.Value());
  }
}

// consume(): reads what is waiting now (at most RingBuffer.batch records),
// hands it to the callback synchronously, and returns how many records.
// @throws Error when closed, or when the ring cannot be read.
Napi::Value RingBuffer::Consume(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!core_ || core_->closing) throw Napi::Error::New(env, "RingBuffer is closed");
  int n = Drain(core_, kBatch);
  if (n < 0) throw MakeError(env, "consume ring buffer", n);
  if (n > 0) {
    auto records = Records(env, core_);
    callback_.Call(Value(), {records.first, records.second, env.Undefined()});
  }
  return Napi::Number::New(env, n);
}

// close(): stops the poll and frees the ring; no callback after this. Idempotent.
Napi::Value RingBuffer::Close(const Napi::CallbackInfo& info) {
  if (core_) {
    Shutdown(core_);
    // core_ stays set (owner alive) until libuv's close callback frees it.
  }
  return info.Env().Undefined();
}

Napi::Value RingBuffer::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  bool open = core_ && !core_->closing;
  out.Set("closed", Napi::Boolean::New(env, !open));
  if (open) {
    out.Set("epollFd", ring_buffer__epoll_fd(core_->rb));
    out.Set("mapFd", core_->map_fd);
  }
  return out;
}

// The environment is going away with the ring still open.
void RingBuffer::OnTeardown(napi_async_cleanup_hook_handle handle, void* arg) {
  Shutdown(static_cast<RingCore*>(arg));
}

// Stops the poll (libuv takes the fd out of its epoll set at once), frees
// the ring and our map fd, and starts closing the handle. Runs once.
void RingBuffer::Shutdown(RingCore* core) {
  if (core->closing) return;
  core->closing = true;
  uv_poll_stop(&core->poll);
  if (core->rb) ring_buffer__free(core->rb);
  core->rb = nullptr;
  if (core->map_fd >= 0) close(core->map_fd);
  core->map_fd = -1;
  uv_close(reinterpret_cast<uv_handle_t*>(&core->poll), OnClosed);
}

void RingBuffer::OnClosed(uv_handle_t* handle) {
  auto* core = static_cast<RingCore*>(handle->data);
  if (core->owner) core->owner->core_ = nullptr;
  {
    Napi::HandleScope scope(Napi::Env(core->env));
    core->async.reset();
  }
  if (core->hook) napi_remove_async_cleanup_hook(core->hook);
  delete core;
}

}  // namespace wirekey
