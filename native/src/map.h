// SPDX-License-Identifier: Apache-2.0
// Map: one map of a loaded object, addressed with raw key/value buffers.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

#include <string>

namespace wirekey {

class Object;

class Map : public Napi::ObjectWrap<Map> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, bpf_map* map, Napi::Value owner);
  // A map opened from its bpffs pin by another process (no libbpf object).
  static Napi::Value OpenPinned(const Napi::CallbackInfo& info);
  // A map by kernel id.
  static Napi::Value OpenById(const Napi::CallbackInfo& info);
  explicit Map(const Napi::CallbackInfo& info);
  ~Map() override;

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Lookup(const Napi::CallbackInfo& info);
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value Delete(const Napi::CallbackInfo& info);
  Napi::Value Keys(const Napi::CallbackInfo& info);
  Napi::Value Pin(const Napi::CallbackInfo& info);
  Napi::Value Unpin(const Napi::CallbackInfo& info);
  Napi::Value AttachedPrograms(const Napi::CallbackInfo& info);
  static Napi::Object FromFd(Napi::Env env, int fd, const std::string& label);

  // The map's fd, after checking that it is usable.
  int Fd(Napi::Env env) const;
  void CheckKey(Napi::Env env, const Napi::Value& key) const;
  size_t LookupSize(Napi::Env env) const;

  bpf_map* map_ = nullptr;     // set for maps of a BpfObject
  Napi::ObjectReference owner_;
  int pinned_fd_ = -1;         // set for maps opened from a pin
  std::string name_;
  uint32_t type_ = 0, key_size_ = 0, value_size_ = 0, max_entries_ = 0;
};

}  // namespace wirekey
