// SPDX-License-Identifier: Apache-2.0
#include "link.h"

#include <bpf/bpf.h>

#include <string>

#include "addon_data.h"
#include "errors.h"

namespace wirekey {

void Link::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "BpfLink",
                                    {
                                        InstanceMethod("info", &Link::Info),
                                        InstanceMethod("pin", &Link::Pin),
                                        InstanceMethod("unpin", &Link::Unpin),
                                        InstanceMethod("destroy", &Link::Destroy),
                                    });
  AddonData::Of(env)->link = Napi::Persistent(ctor);
}

Napi::Object Link::NewInstance(Napi::Env env, bpf_link* link) {
  Napi::Object obj = AddonData::Of(env)->link.New({});
  Link::Unwrap(obj)->link_ = link;
  return obj;
}

Link::Link(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Link>(info) {}

// A collected Link detaches its program unless it was pinned: that is the
// kernel's rule for link fds, and why the controller holds every Link.
Link::~Link() {
  if (link_) bpf_link__destroy(link_);
}

Napi::Value Link::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  if (!link_) return env.Null();
  bpf_link_info linfo = {};
  __u32 len = sizeof(linfo);
  int fd = bpf_link__fd(link_);
  out.Set("fd", fd);
  if (bpf_obj_get_info_by_fd(fd, &linfo, &len) == 0) {
    out.Set("id", linfo.id);
    out.Set("progId", linfo.prog_id);
  }
  const char* pin = bpf_link__pin_path(link_);
  if (pin) out.Set("pinPath", pin);
  return out;
}

Napi::Value Link::Pin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!link_) throw Napi::Error::New(env, "BpfLink is destroyed");
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "pin(path)");
  std::string path = info[0].As<Napi::String>();
  ResetLibbpfLog();
  int err = bpf_link__pin(link_, path.c_str());
  if (err) throw MakeError(env, "pin link at " + path, err);
  return env.Undefined();
}

Napi::Value Link::Unpin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!link_ || !bpf_link__pin_path(link_)) return env.Undefined();
  ResetLibbpfLog();
  int err = bpf_link__unpin(link_);
  if (err) throw MakeError(env, "unpin link", err);
  return env.Undefined();
}

// destroy(): detaches now (a pinned link stays attached until unpinned).
Napi::Value Link::Destroy(const Napi::CallbackInfo& info) {
  if (link_) {
    bpf_link__destroy(link_);
    link_ = nullptr;
  }
  return info.Env().Undefined();
}

}  // namespace wirekey
