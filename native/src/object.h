// SPDX-License-Identifier: Apache-2.0
// Object: one BPF ELF object (libbpf's struct bpf_object), from open to load.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

namespace wirekey {

class Object : public Napi::ObjectWrap<Object> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  explicit Object(const Napi::CallbackInfo& info);
  ~Object() override;

  bpf_object* raw() const { return obj_; }
  bool loaded() const { return loaded_; }

 private:
  Napi::Value SetGlobal(const Napi::CallbackInfo& info);
  Napi::Value SetAutoload(const Napi::CallbackInfo& info);
  Napi::Value Load(const Napi::CallbackInfo& info);
  Napi::Value Programs(const Napi::CallbackInfo& info);
  Napi::Value AttachCgroup(const Napi::CallbackInfo& info);
  Napi::Value Attach(const Napi::CallbackInfo& info);
  Napi::Value AttachToMap(const Napi::CallbackInfo& info);
  Napi::Value DetachFromMap(const Napi::CallbackInfo& info);
  Napi::Value Iterate(const Napi::CallbackInfo& info);
  Napi::Value Map(const Napi::CallbackInfo& info);
  Napi::Value BtfStruct(const Napi::CallbackInfo& info);
  Napi::Value BtfEnum(const Napi::CallbackInfo& info);
  Napi::Value BtfEnumNames(const Napi::CallbackInfo& info);
  Napi::Value Close(const Napi::CallbackInfo& info);

  bpf_object* Checked(Napi::Env env) const;

  bpf_object* obj_ = nullptr;
  bool loaded_ = false;
};

}  // namespace wirekey
