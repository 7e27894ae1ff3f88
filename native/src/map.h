// SPDX-License-Identifier: Apache-2.0
// Map: one map of a loaded object, addressed with raw key/value buffers.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

namespace wirekey {

class Object;

class Map : public Napi::ObjectWrap<Map> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, bpf_map* map, Napi::Value owner);
  explicit Map(const Napi::CallbackInfo& info);

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Lookup(const Napi::CallbackInfo& info);
  Napi::Value Update(const Napi::CallbackInfo& info);
  Napi::Value Delete(const Napi::CallbackInfo& info);
  Napi::Value Keys(const Napi::CallbackInfo& info);
  Napi::Value Pin(const Napi::CallbackInfo& info);
  Napi::Value Unpin(const Napi::CallbackInfo& info);

  bpf_map* Checked(Napi::Env env, bool needLoaded) const;
  void CheckKey(Napi::Env env, const Napi::Value& key) const;

  static Napi::FunctionReference constructor_;
  bpf_map* map_ = nullptr;
  Napi::ObjectReference owner_;
};

}  // namespace wirekey
