// SPDX-License-Identifier: Apache-2.0
#include "object.h"

#include <bpf/bpf.h>
#include <bpf/btf.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "link.h"
#include "map.h"

namespace wirekey {

void Object::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "BpfObject",
                                    {
                                        InstanceMethod("setGlobal", &Object::SetGlobal),
                                        InstanceMethod("setAutoload", &Object::SetAutoload),
                                        InstanceMethod("load", &Object::Load),
                                        InstanceMethod("programs", &Object::Programs),
                                        InstanceMethod("attachCgroup", &Object::AttachCgroup),
                                        InstanceMethod("attach", &Object::Attach),
                                        InstanceMethod("attachToMap", &Object::AttachToMap),
                                        InstanceMethod("detachFromMap", &Object::DetachFromMap),
                                        InstanceMethod("iterate", &Object::Iterate),
                                        InstanceMethod("map", &Object::Map),
                                        InstanceMethod("btfStruct", &Object::BtfStruct),
                                        InstanceMethod("btfEnum", &Object::BtfEnum),
                                        InstanceMethod("btfEnumNames", &Object::BtfEnumNames),
                                        InstanceMethod("close", &Object::Close),
                                    });
  exports.Set("BpfObject", ctor);
}

// new BpfObject(path): opens (parses) the ELF file; nothing reaches the kernel yet.
Object::Object(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Object>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) {
    throw Napi::TypeError::New(env, "BpfObject(path): path must be a string");
  }
  std::string path = info[0].As<Napi::String>();
  ResetLibbpfLog();
  obj_ = bpf_object__open_file(path.c_str(), nullptr);
  int err = libbpf_get_error(obj_);
  if (err) {
    obj_ = nullptr;
    throw MakeError(env, "open " + path, err);
  }
}

Object::~Object() {
  if (obj_) bpf_object__close(obj_);
}

bpf_object* Object::Checked(Napi::Env env) const {
  if (!obj_) throw Napi::Error::New(env, "BpfObject is closed");
  return obj_;
}

// setGlobal(name, buffer): sets a `const volatile` global in .rodata before load.
Napi::Value Object::SetGlobal(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBuffer()) {
    throw Napi::TypeError::New(env, "setGlobal(name, buffer)");
  }
  if (loaded_) throw Napi::Error::New(env, "setGlobal: object is already loaded");
  std::string name = info[0].As<Napi::String>();
  auto value = info[1].As<Napi::Buffer<uint8_t>>();

  const btf* btf = bpf_object__btf(obj);
  if (!btf) throw Napi::Error::New(env, "setGlobal: object has no BTF");
  int sec_id = btf__find_by_name_kind(btf, ".rodata", BTF_KIND_DATASEC);
  if (sec_id < 0) throw Napi::Error::New(env, "setGlobal: object has no .rodata section");

  bpf_map* rodata = nullptr;
  bpf_map* m;
  bpf_object__for_each_map(m, obj) {
    const char* n = bpf_map__name(m);
    size_t len = strlen(n);
    if (len >= 7 && strcmp(n + len - 7, ".rodata") == 0) rodata = m;
  }
  if (!rodata) throw Napi::Error::New(env, "setGlobal: object has no .rodata map");

  const btf_type* sec = btf__type_by_id(btf, sec_id);
  const btf_var_secinfo* vs = btf_var_secinfos(sec);
  for (int i = 0; i < btf_vlen(sec); i++, vs++) {
    const btf_type* var = btf__type_by_id(btf, vs->type);
    if (name != btf__name_by_offset(btf, var->name_off)) continue;
    if (value.Length() != vs->size) {
      throw Napi::RangeError::New(env, "setGlobal " + name + ": expected " + std::to_string(vs->size) +
                                           " bytes, got " + std::to_string(value.Length()));
    }
    size_t size = 0;
    // libbpf < 1.2 returns const; the data is libbpf's own copy and writable until load.
    auto* data = static_cast<uint8_t*>(const_cast<void*>(static_cast<const void*>(bpf_map__initial_value(rodata, &size))));
    if (!data || vs->offset + vs->size > size) throw Napi::Error::New(env, "setGlobal: .rodata is not writable");
    memcpy(data + vs->offset, value.Data(), vs->size);
    return env.Undefined();
  }
  throw Napi::Error::New(env, "setGlobal: no global named " + name);
}

// setAutoload(programName, bool): whether load() loads the program. Programs in a
// SEC("?...") section are off unless turned on here, before load.
Napi::Value Object::SetAutoload(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsBoolean()) {
    throw Napi::TypeError::New(env, "setAutoload(programName, boolean)");
  }
  if (loaded_) throw Napi::Error::New(env, "setAutoload: object is already loaded");
  std::string name = info[0].As<Napi::String>();
  bpf_program* prog = bpf_object__find_program_by_name(obj, name.c_str());
  if (!prog) throw Napi::Error::New(env, "setAutoload: no program named " + name);
  int err = bpf_program__set_autoload(prog, info[1].As<Napi::Boolean>().Value());
  if (err) throw MakeError(env, "setAutoload " + name, err);
  return env.Undefined();
}

// load(): creates maps and loads every program; on refusal the error carries the verifier log.
Napi::Value Object::Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  ResetLibbpfLog();
  int err = bpf_object__load(obj);
  if (err) throw MakeError(env, "load BPF object", err);
  loaded_ = true;
  return env.Undefined();
}

Napi::Value Object::Programs(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  Napi::Array out = Napi::Array::New(env);
  bpf_program* prog;
  uint32_t i = 0;
  bpf_object__for_each_program(prog, obj) {
    Napi::Object p = Napi::Object::New(env);
    p.Set("name", bpf_program__name(prog));
    p.Set("section", bpf_program__section_name(prog));
    if (loaded_) {
      bpf_prog_info pinfo = {};
      __u32 len = sizeof(pinfo);
      if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &pinfo, &len) == 0) p.Set("id", pinfo.id);
    }
    out.Set(i++, p);
  }
  return out;
}

// attachCgroup(programName, cgroupPath): a bpf_link on that cgroup (kernel >= 5.7).
Napi::Value Object::AttachCgroup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, "attachCgroup(programName, cgroupPath)");
  }
  if (!loaded_) throw Napi::Error::New(env, "attachCgroup: object is not loaded");
  std::string name = info[0].As<Napi::String>();
  std::string path = info[1].As<Napi::String>();
  bpf_program* prog = bpf_object__find_program_by_name(obj, name.c_str());
  if (!prog) throw Napi::Error::New(env, "attachCgroup: no program named " + name);

  int cg = open(path.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (cg < 0) throw MakeError(env, "open cgroup " + path, errno);
  ResetLibbpfLog();
  bpf_link* link = bpf_program__attach_cgroup(prog, cg);
  int err = libbpf_get_error(link);
  close(cg);
  if (err) throw MakeError(env, "attach " + name + " to " + path, err);
  return Link::NewInstance(env, link);
}

// attach(programName): attaches as the program's section says (tp_btf, ...).
Napi::Value Object::Attach(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "attach(programName)");
  if (!loaded_) throw Napi::Error::New(env, "attach: object is not loaded");
  std::string name = info[0].As<Napi::String>();
  bpf_program* prog = bpf_object__find_program_by_name(obj, name.c_str());
  if (!prog) throw Napi::Error::New(env, "attach: no program named " + name);
  ResetLibbpfLog();
  bpf_link* link = bpf_program__attach(prog);
  int err = libbpf_get_error(link);
  if (err) throw MakeError(env, "attach " + name, err);
  return Link::NewInstance(env, link);
}

// iterate(programName, pid): runs an iterator program (SEC("iter/...")) once
// and returns everything it wrote. A non-zero pid limits a task iterator to
// that process's threads (Linux 6.1). The link lives only for the call.
// Runs on the calling thread: wirekey's iterators are bounded by the
// processes on the host or the agent's own descriptors.
Napi::Value Object::Iterate(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsNumber()) {
    throw Napi::TypeError::New(env, "iterate(programName, pid)");
  }
  if (!loaded_) throw Napi::Error::New(env, "iterate: object is not loaded");
  std::string name = info[0].As<Napi::String>();
  uint32_t pid = info[1].As<Napi::Number>().Uint32Value();
  bpf_program* prog = bpf_object__find_program_by_name(obj, name.c_str());
  if (!prog) throw Napi::Error::New(env, "iterate: no program named " + name);

  union bpf_iter_link_info linfo;
  memset(&linfo, 0, sizeof(linfo));
  LIBBPF_OPTS(bpf_iter_attach_opts, opts);
  if (pid) {
    linfo.task.pid = pid;
    opts.link_info = &linfo;
    opts.link_info_len = sizeof(linfo);
  }
  ResetLibbpfLog();
  bpf_link* link = bpf_program__attach_iter(prog, &opts);
  int err = libbpf_get_error(link);
  if (err) throw MakeError(env, "attach iterator " + name, err);
  int fd = bpf_iter_create(bpf_link__fd(link));
  if (fd < 0) {
    err = errno;
    bpf_link__destroy(link);
    throw MakeError(env, "create iterator " + name, err);
  }
  std::vector<uint8_t> out;
  uint8_t buf[4096];
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      err = errno;
      close(fd);
      bpf_link__destroy(link);
      throw MakeError(env, "read iterator " + name, err);
    }
    out.insert(out.end(), buf, buf + n);
  }
  close(fd);
  bpf_link__destroy(link);
  return Napi::Buffer<uint8_t>::Copy(env, out.data(), out.size());
}

// Resolves (programName, mapName) for attachToMap/detachFromMap.
static void ProgramAndMap(Napi::Env env, bpf_object* obj, const Napi::CallbackInfo& info, const char* what,
                          bpf_program** prog, bpf_map** map) {
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsString()) {
    throw Napi::TypeError::New(env, std::string(what) + "(programName, mapName)");
  }
  std::string prog_name = info[0].As<Napi::String>();
  std::string map_name = info[1].As<Napi::String>();
  *prog = bpf_object__find_program_by_name(obj, prog_name.c_str());
  if (!*prog) throw Napi::Error::New(env, std::string(what) + ": no program named " + prog_name);
  *map = bpf_object__find_map_by_name(obj, map_name.c_str());
  if (!*map) throw Napi::Error::New(env, std::string(what) + ": no map named " + map_name);
}

// attachToMap(programName, mapName): attaches an sk_msg (or sk_skb) program to a
// sockmap/sockhash with bpf_prog_attach, as the program's expected attach
// type says (BPF_SK_MSG_VERDICT for SEC("sk_msg")). Returns nothing: libbpf
// 1.1 has no link for this (the kernel has one from 6.10 only).
//
// Lifecycle: the attachment belongs to the map, not to this object or to a
// file descriptor. It lasts until detachFromMap(), or until the map itself
// is destroyed (its last fd closed and no pin left). A socket takes the
// map's programs when it is added to the map and keeps them until it leaves
// the map, so attach before sockets are added, and a detach only affects
// sockets added afterwards.
Napi::Value Object::AttachToMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (!loaded_) throw Napi::Error::New(env, "attachToMap: object is not loaded");
  bpf_program* prog;
  bpf_map* map;
  ProgramAndMap(env, obj, info, "attachToMap", &prog, &map);
  ResetLibbpfLog();
  int err = bpf_prog_attach(bpf_program__fd(prog), bpf_map__fd(map), bpf_program__expected_attach_type(prog), 0);
  if (err) {
    throw MakeError(env, std::string("attach ") + bpf_program__name(prog) + " to map " + bpf_map__name(map),
                    err < 0 ? err : errno);
  }
  return env.Undefined();
}

// detachFromMap(programName, mapName): undoes attachToMap (bpf_prog_detach2).
Napi::Value Object::DetachFromMap(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (!loaded_) throw Napi::Error::New(env, "detachFromMap: object is not loaded");
  bpf_program* prog;
  bpf_map* map;
  ProgramAndMap(env, obj, info, "detachFromMap", &prog, &map);
  ResetLibbpfLog();
  int err = bpf_prog_detach2(bpf_program__fd(prog), bpf_map__fd(map), bpf_program__expected_attach_type(prog));
  if (err) {
    throw MakeError(env, std::string("detach ") + bpf_program__name(prog) + " from map " + bpf_map__name(map),
                    err < 0 ? err : errno);
  }
  return env.Undefined();
}

Napi::Value Object::Map(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "map(name)");
  std::string name = info[0].As<Napi::String>();
  bpf_map* map = bpf_object__find_map_by_name(obj, name.c_str());
  if (!map) throw Napi::Error::New(env, "no map named " + name);
  return Map::NewInstance(env, map, Value());
}

// btfStruct(name): {size, members: [{name, offset, size}]} from the object's BTF,
// so the controller can check its view of a shared struct against the compiler's.
Napi::Value Object::BtfStruct(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "btfStruct(name)");
  std::string name = info[0].As<Napi::String>();
  const btf* btf = bpf_object__btf(obj);
  if (!btf) throw Napi::Error::New(env, "btfStruct: object has no BTF");
  int id = btf__find_by_name_kind(btf, name.c_str(), BTF_KIND_STRUCT);
  if (id < 0) return env.Null();
  const btf_type* t = btf__type_by_id(btf, id);
  Napi::Object out = Napi::Object::New(env);
  out.Set("size", t->size);
  Napi::Array members = Napi::Array::New(env);
  const btf_member* m = btf_members(t);
  for (int i = 0; i < btf_vlen(t); i++, m++) {
    Napi::Object mo = Napi::Object::New(env);
    mo.Set("name", btf__name_by_offset(btf, m->name_off));
    mo.Set("offset", btf_member_bit_offset(t, i) / 8);
    mo.Set("size", static_cast<double>(btf__resolve_size(btf, m->type)));
    members.Set(i, mo);
  }
  out.Set("members", members);
  return out;
}

// btfEnum(name): {NAME: value} of an enum in the object's BTF, so the
// controller can check its copies of the constants shared with the programs.
Napi::Value Object::BtfEnum(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "btfEnum(name)");
  std::string name = info[0].As<Napi::String>();
  const btf* btf = bpf_object__btf(obj);
  if (!btf) throw Napi::Error::New(env, "btfEnum: object has no BTF");
  int id = btf__find_by_name_kind(btf, name.c_str(), BTF_KIND_ENUM);
  if (id < 0) return env.Null();
  const btf_type* t = btf__type_by_id(btf, id);
  Napi::Object out = Napi::Object::New(env);
  const struct btf_enum* e = btf_enum(t);
  for (int i = 0; i < btf_vlen(t); i++, e++) {
    double value = btf_kflag(t) ? static_cast<double>(static_cast<int32_t>(e->val)) : static_cast<double>(static_cast<uint32_t>(e->val));
    out.Set(btf__name_by_offset(btf, e->name_off), value);
  }
  return out;
}

// btfEnumNames(): the names of every named enum in the object's BTF, so the
// controller can tell a shared enum it does not check from one it does.
Napi::Value Object::BtfEnumNames(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_object* obj = Checked(env);
  const btf* btf = bpf_object__btf(obj);
  if (!btf) throw Napi::Error::New(env, "btfEnumNames: object has no BTF");
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  for (__u32 id = 1; id < btf__type_cnt(btf); id++) {
    const btf_type* t = btf__type_by_id(btf, id);
    if (!btf_is_enum(t) || !t->name_off) continue;
    out.Set(n++, btf__name_by_offset(btf, t->name_off));
  }
  return out;
}

Napi::Value Object::Close(const Napi::CallbackInfo& info) {
  if (obj_) {
    bpf_object__close(obj_);
    obj_ = nullptr;
  }
  return info.Env().Undefined();
}

}  // namespace wirekey
