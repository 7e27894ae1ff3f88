// SPDX-License-Identifier: Apache-2.0
// Link: an attachment (bpf_link) with its own lifecycle, apart from its program.
// While a Link is held (or pinned) the program stays attached.
#pragma once

#include <bpf/libbpf.h>
#include <napi.h>

namespace wirekey {

class Link : public Napi::ObjectWrap<Link> {
 public:
  static void Init(Napi::Env env, Napi::Object exports);
  static Napi::Object NewInstance(Napi::Env env, bpf_link* link);
  explicit Link(const Napi::CallbackInfo& info);
  ~Link() override;

 private:
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Pin(const Napi::CallbackInfo& info);
  Napi::Value Unpin(const Napi::CallbackInfo& info);
  Napi::Value Destroy(const Napi::CallbackInfo& info);

  bpf_link* link_ = nullptr;
};

}  // namespace wirekey
