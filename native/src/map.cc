// SPDX-License-Identifier: Apache-2.0
#include "map.h"

#include <bpf/bpf.h>
#include <unistd.h>

#include <cerrno>
#include <string>
#include <vector>

#include "addon_data.h"
#include "errors.h"
#include "object.h"

namespace wirekey {

void Map::Init(Napi::Env env, Napi::Object exports) {
  Napi::Function ctor = DefineClass(env, "BpfMap",
                                    {
                                        InstanceMethod("info", &Map::Info),
                                        InstanceMethod("lookup", &Map::Lookup),
                                        InstanceMethod("update", &Map::Update),
                                        InstanceMethod("delete", &Map::Delete),
                                        InstanceMethod("keys", &Map::Keys),
                                        InstanceMethod("pin", &Map::Pin),
                                        InstanceMethod("unpin", &Map::Unpin),
                                        InstanceMethod("attachedPrograms", &Map::AttachedPrograms),
                                    });
  AddonData::Of(env)->map = Napi::Persistent(ctor);
}

Napi::Object Map::NewInstance(Napi::Env env, bpf_map* map, Napi::Value owner) {
  Napi::Object obj = AddonData::Of(env)->map.New({owner});
  Map* self = Map::Unwrap(obj);
  self->map_ = map;
  self->name_ = bpf_map__name(map);
  self->type_ = bpf_map__type(map);
  self->key_size_ = bpf_map__key_size(map);
  self->value_size_ = bpf_map__value_size(map);
  self->max_entries_ = bpf_map__max_entries(map);
  return obj;
}

// openPinnedMap(path): a map pinned by a running agent, for read-mostly tools.
Napi::Value Map::OpenPinned(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "openPinnedMap(path)");
  std::string path = info[0].As<Napi::String>();
  ResetLibbpfLog();
  int fd = bpf_obj_get(path.c_str());
  if (fd < 0) throw MakeError(env, "open pinned map " + path, errno);
  return FromFd(env, fd, path);
}

// openMapById(id): a map by its kernel id (as bpftool map show names it), e.g.
// one that a program still uses after its object's pins are gone.
Napi::Value Map::OpenById(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsNumber()) throw Napi::TypeError::New(env, "openMapById(id)");
  uint32_t id = info[0].As<Napi::Number>().Uint32Value();
  int fd = bpf_map_get_fd_by_id(id);
  if (fd < 0) throw MakeError(env, "open map id " + std::to_string(id), errno);
  return FromFd(env, fd, "map id " + std::to_string(id));
}

// Takes ownership of `fd`.
Napi::Object Map::FromFd(Napi::Env env, int fd, const std::string& label) {
  bpf_map_info minfo = {};
  __u32 len = sizeof(minfo);
  if (bpf_obj_get_info_by_fd(fd, &minfo, &len)) {
    int err = errno;
    close(fd);
    throw MakeError(env, "map info of " + label, err);
  }
  Napi::Object obj = AddonData::Of(env)->map.New({Napi::Object::New(env)});
  Map* self = Map::Unwrap(obj);
  self->pinned_fd_ = fd;
  self->name_ = minfo.name;
  self->type_ = minfo.type;
  self->key_size_ = minfo.key_size;
  self->value_size_ = minfo.value_size;
  self->max_entries_ = minfo.max_entries;
  return obj;
}

// Only NewInstance and OpenPinned make usable maps; the owner reference keeps
// a BpfObject open while its maps are reachable.
Map::Map(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Map>(info) {
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw Napi::TypeError::New(info.Env(), "BpfMap cannot be constructed directly; use BpfObject.map()");
  }
  owner_ = Napi::Persistent(info[0].As<Napi::Object>());
}

Map::~Map() {
  if (pinned_fd_ >= 0) close(pinned_fd_);
}

int Map::Fd(Napi::Env env) const {
  if (pinned_fd_ >= 0) return pinned_fd_;
  Object* owner = Object::Unwrap(owner_.Value());
  if (!map_ || !owner->raw()) throw Napi::Error::New(env, "BpfMap: its object is closed");
  if (!owner->loaded()) throw Napi::Error::New(env, "BpfMap: object is not loaded");
  return bpf_map__fd(map_);
}

void Map::CheckKey(Napi::Env env, const Napi::Value& key) const {
  if (!key.IsBuffer()) throw Napi::TypeError::New(env, "key must be a Buffer");
  size_t got = key.As<Napi::Buffer<uint8_t>>().Length();
  if (key_size_ != got) {
    throw Napi::RangeError::New(env, name_ + ": key must be " + std::to_string(key_size_) + " bytes, got " +
                                         std::to_string(got));
  }
}

Napi::Value Map::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (pinned_fd_ < 0) {
    Object* owner = Object::Unwrap(owner_.Value());
    if (!map_ || !owner->raw()) throw Napi::Error::New(env, "BpfMap: its object is closed");
  }
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", name_);
  out.Set("type", static_cast<double>(type_));
  out.Set("keySize", key_size_);
  out.Set("valueSize", value_size_);
  out.Set("maxEntries", max_entries_);
  int fd = pinned_fd_ >= 0 ? pinned_fd_ : bpf_map__fd(map_);
  out.Set("fd", fd);
  bpf_map_info minfo = {};
  __u32 len = sizeof(minfo);
  if (fd >= 0 && bpf_obj_get_info_by_fd(fd, &minfo, &len) == 0) out.Set("id", minfo.id);
  return out;
}

// Bytes a lookup returns: one value, or for a per-CPU map one per possible
// CPU, each rounded up to 8 bytes, back to back (what bpf(2) copies out).
size_t Map::LookupSize(Napi::Env env) const {
  switch (type_) {
    case BPF_MAP_TYPE_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_ARRAY:
    case BPF_MAP_TYPE_LRU_PERCPU_HASH:
    case BPF_MAP_TYPE_PERCPU_CGROUP_STORAGE: {
      int cpus = libbpf_num_possible_cpus();
      if (cpus <= 0) throw MakeError(env, "possible CPUs for " + name_, -cpus);
      return static_cast<size_t>(cpus) * ((value_size_ + 7) / 8 * 8);
    }
    default:
      return value_size_;
  }
}

// lookup(key): Buffer, or null when the key is absent. A per-CPU map's value
// is every possible CPU's, each padded to 8 bytes, in CPU order.
Napi::Value Map::Lookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  CheckKey(env, info[0]);
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> value(LookupSize(env));
  int err = bpf_map_lookup_elem(fd, key.Data(), value.data()) ? -errno : 0;
  if (err == -ENOENT) return env.Null();
  if (err) throw MakeError(env, "lookup in " + name_, err);
  return Napi::Buffer<uint8_t>::Copy(env, value.data(), value.size());
}

// update(key, value, flags = BPF_ANY)
Napi::Value Map::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  CheckKey(env, info[0]);
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "value must be a Buffer");
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  auto value = info[1].As<Napi::Buffer<uint8_t>>();
  size_t want = LookupSize(env);
  if (value.Length() != want) {
    throw Napi::RangeError::New(env, name_ + ": value must be " + std::to_string(want) + " bytes");
  }
  uint64_t flags = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : static_cast<uint64_t>(BPF_ANY);
  int err = bpf_map_update_elem(fd, key.Data(), value.Data(), flags) ? -errno : 0;
  if (err) throw MakeError(env, "update in " + name_, err);
  return env.Undefined();
}

// delete(key): true if the key was present.
Napi::Value Map::Delete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  CheckKey(env, info[0]);
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  int err = bpf_map_delete_elem(fd, key.Data()) ? -errno : 0;
  if (err == -ENOENT) return Napi::Boolean::New(env, false);
  if (err) throw MakeError(env, "delete in " + name_, err);
  return Napi::Boolean::New(env, true);
}

// keys(): every key currently in the map (a snapshot; concurrent updates may be missed).
Napi::Value Map::Keys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  size_t ks = key_size_;
  std::vector<uint8_t> cur(ks), next(ks);
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  const void* prev = nullptr;
  for (;;) {
    int err = bpf_map_get_next_key(fd, prev, next.data()) ? -errno : 0;
    if (err == -ENOENT) break;
    if (err) throw MakeError(env, "iterate " + name_, err);
    out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), ks));
    cur.swap(next);
    prev = cur.data();
  }
  return out;
}

Napi::Value Map::Pin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Fd(env);
  bpf_map* map = map_;
  if (!map) throw Napi::Error::New(env, "pin: " + name_ + " was opened from a pin");
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "pin(path)");
  std::string path = info[0].As<Napi::String>();
  ResetLibbpfLog();
  int err = bpf_map__pin(map, path.c_str());
  if (err) throw MakeError(env, "pin " + std::string(bpf_map__name(map)) + " at " + path, err);
  return env.Undefined();
}

Napi::Value Map::Unpin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = map_;
  if (!map || !bpf_map__is_pinned(map)) return env.Undefined();
  Object* owner = Object::Unwrap(owner_.Value());
  if (!owner->raw()) throw Napi::Error::New(env, "BpfMap: its object is closed");
  ResetLibbpfLog();
  int err = bpf_map__unpin(map, nullptr);
  if (err) throw MakeError(env, "unpin " + std::string(bpf_map__name(map)), err);
  return env.Undefined();
}

// attachedPrograms(): ids of the sk_msg programs attached to this sockmap or
// sockhash (BPF_PROG_QUERY on the map, kernel >= 5.19).
Napi::Value Map::AttachedPrograms(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  int fd = Fd(env);
  __u32 ids[8] = {};
  __u32 count = 8, attach_flags = 0;
  if (bpf_prog_query(fd, BPF_SK_MSG_VERDICT, 0, &attach_flags, ids, &count)) {
    throw MakeError(env, "query programs of " + name_, errno);
  }
  Napi::Array out = Napi::Array::New(env);
  for (__u32 i = 0; i < count && i < 8; i++) out.Set(i, ids[i]);
  return out;
}

}  // namespace wirekey
