// SPDX-License-Identifier: Apache-2.0
#include "probe.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <bpf/libbpf.h>
#include <linux/filter.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "errors.h"

namespace wirekey {
namespace {

uint32_t Arg(const Napi::CallbackInfo& info, size_t i, const char* usage) {
  if (info.Length() <= i || !info[i].IsNumber()) throw Napi::TypeError::New(info.Env(), usage);
  return info[i].As<Napi::Number>().Uint32Value();
}

// libbpf's probes answer 1 (present), 0 (absent) or a negative errno (could
// not tell: no privileges, a type this libbpf cannot probe).
Napi::Value Answer(Napi::Env env, const std::string& what, int rc) {
  if (rc < 0) throw MakeError(env, what, rc);
  return Napi::Boolean::New(env, rc == 1);
}

// probeProgType(type): libbpf_probe_bpf_prog_type.
Napi::Value ProbeProgType(const Napi::CallbackInfo& info) {
  uint32_t type = Arg(info, 0, "probeProgType(progType)");
  ResetLibbpfLog();
  return Answer(info.Env(), "probe program type " + std::to_string(type),
                libbpf_probe_bpf_prog_type(static_cast<bpf_prog_type>(type), nullptr));
}

// probeMapType(type): libbpf_probe_bpf_map_type.
Napi::Value ProbeMapType(const Napi::CallbackInfo& info) {
  uint32_t type = Arg(info, 0, "probeMapType(mapType)");
  ResetLibbpfLog();
  return Answer(info.Env(), "probe map type " + std::to_string(type),
                libbpf_probe_bpf_map_type(static_cast<bpf_map_type>(type), nullptr));
}

// probeHelper(progType, helperId): libbpf_probe_bpf_helper.
Napi::Value ProbeHelper(const Napi::CallbackInfo& info) {
  uint32_t type = Arg(info, 0, "probeHelper(progType, helperId)");
  uint32_t helper = Arg(info, 1, "probeHelper(progType, helperId)");
  ResetLibbpfLog();
  return Answer(info.Env(), "probe helper " + std::to_string(helper) + " in program type " + std::to_string(type),
                libbpf_probe_bpf_helper(static_cast<bpf_prog_type>(type), static_cast<bpf_func_id>(helper), nullptr));
}

// probeLoad({progType, expectedAttachType?, attachTo?, helper?, returnValue?, attach?}):
// loads a program that returns returnValue (or first calls one helper,
// with whatever is in its argument registers) and returns {loaded, attached, errno, log}
// with the verifier's log. For what libbpf 1.1 cannot probe: tracing
// programs need a BTF id to attach to (attachTo: a function for fentry/fexit,
// a tracepoint name for tp_btf), trampolines are only known to work once
// one is attached (attach: true attaches, then detaches at once), and its
// helper probe does not know every wording of "no such helper".
Napi::Value ProbeLoad(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsObject()) throw Napi::TypeError::New(env, "probeLoad({progType, ...})");
  Napi::Object o = info[0].As<Napi::Object>();
  auto num = [&](const char* key, uint32_t dflt) -> uint32_t {
    Napi::Value v = o.Get(key);
    if (v.IsUndefined()) return dflt;
    if (!v.IsNumber()) throw Napi::TypeError::New(env, std::string("probeLoad: ") + key + " must be a number");
    return v.As<Napi::Number>().Uint32Value();
  };
  uint32_t type = num("progType", UINT32_MAX);
  if (type == UINT32_MAX) throw Napi::TypeError::New(env, "probeLoad: progType is required");
  uint32_t expected = num("expectedAttachType", 0);
  uint32_t helper = num("helper", 0);
  uint32_t ret = num("returnValue", 0);
  bool attach = o.Get("attach").ToBoolean().Value();
  std::string attach_to = o.Get("attachTo").IsString() ? o.Get("attachTo").As<Napi::String>().Utf8Value() : "";

  Napi::Object out = Napi::Object::New(env);
  out.Set("loaded", false);
  out.Set("attached", false);

  LIBBPF_OPTS(bpf_prog_load_opts, opts);
  opts.expected_attach_type = static_cast<bpf_attach_type>(expected);
  if (!attach_to.empty()) {
    ResetLibbpfLog();
    int id = libbpf_find_vmlinux_btf_id(attach_to.c_str(), static_cast<bpf_attach_type>(expected));
    if (id < 0) {
      out.Set("errno", Napi::Number::New(env, -id));
      out.Set("log", Napi::String::New(env, attach_to + " is not in the kernel's BTF"));
      return out;
    }
    opts.attach_btf_id = id;
  }
  std::vector<bpf_insn> insns;
  if (helper) insns.push_back(bpf_insn{BPF_JMP | BPF_CALL, 0, 0, 0, static_cast<int32_t>(helper)});
  insns.push_back(bpf_insn{BPF_ALU64 | BPF_MOV | BPF_K, BPF_REG_0, 0, 0, static_cast<int32_t>(ret)});
  insns.push_back(bpf_insn{BPF_JMP | BPF_EXIT, 0, 0, 0, 0});
  std::string log(16384, '\0');
  opts.log_buf = log.data();
  opts.log_size = log.size();
  opts.log_level = 1;
  int fd = bpf_prog_load(static_cast<bpf_prog_type>(type), "wk_probe", "GPL", insns.data(), insns.size(), &opts);
  int err = fd < 0 ? errno : 0;
  log.resize(log.find('\0') == std::string::npos ? log.size() : log.find('\0'));
  out.Set("log", Napi::String::New(env, log));
  if (fd < 0) {
    out.Set("errno", Napi::Number::New(env, err));
    return out;
  }
  out.Set("loaded", true);
  if (attach) {
    int link = bpf_link_create(fd, 0, static_cast<bpf_attach_type>(expected), nullptr);
    // Kernels before bpf_link for tracing (5.8) attach with raw_tracepoint_open.
    if (link < 0 && errno == EINVAL) link = bpf_raw_tracepoint_open(nullptr, fd);
    if (link < 0) {
      out.Set("errno", Napi::Number::New(env, errno));
    } else {
      out.Set("attached", true);
      close(link);
    }
  }
  close(fd);
  return out;
}

}  // namespace

void InitProbes(Napi::Env env, Napi::Object exports) {
  exports.Set("probeProgType", Napi::Function::New(env, ProbeProgType));
  exports.Set("probeMapType", Napi::Function::New(env, ProbeMapType));
  exports.Set("probeHelper", Napi::Function::New(env, ProbeHelper));
  exports.Set("probeLoad", Napi::Function::New(env, ProbeLoad));
}

}  // namespace wirekey
