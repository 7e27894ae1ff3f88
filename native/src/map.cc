// SPDX-License-Identifier: Apache-2.0
#include "map.h"

#include <cerrno>
#include <string>
#include <vector>

#include "errors.h"
#include "object.h"

namespace wirekey {

Napi::FunctionReference Map::constructor_;

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
                                    });
  constructor_ = Napi::Persistent(ctor);
  constructor_.SuppressDestruct();
}

Napi::Object Map::NewInstance(Napi::Env env, bpf_map* map, Napi::Value owner) {
  Napi::Object obj = constructor_.New({owner});
  Map* self = Map::Unwrap(obj);
  self->map_ = map;
  return obj;
}

// Only NewInstance makes usable maps; the owner reference keeps the object open.
Map::Map(const Napi::CallbackInfo& info) : Napi::ObjectWrap<Map>(info) {
  if (info.Length() < 1 || !info[0].IsObject()) {
    throw Napi::TypeError::New(info.Env(), "BpfMap cannot be constructed directly; use BpfObject.map()");
  }
  owner_ = Napi::Persistent(info[0].As<Napi::Object>());
}

bpf_map* Map::Checked(Napi::Env env, bool needLoaded) const {
  Object* owner = Object::Unwrap(owner_.Value());
  if (!map_ || !owner->raw()) throw Napi::Error::New(env, "BpfMap: its object is closed");
  if (needLoaded && !owner->loaded()) throw Napi::Error::New(env, "BpfMap: object is not loaded");
  return map_;
}

void Map::CheckKey(Napi::Env env, const Napi::Value& key) const {
  if (!key.IsBuffer()) throw Napi::TypeError::New(env, "key must be a Buffer");
  size_t want = bpf_map__key_size(map_);
  size_t got = key.As<Napi::Buffer<uint8_t>>().Length();
  if (want != got) {
    throw Napi::RangeError::New(env, std::string(bpf_map__name(map_)) + ": key must be " + std::to_string(want) +
                                         " bytes, got " + std::to_string(got));
  }
}

Napi::Value Map::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, false);
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", bpf_map__name(map));
  out.Set("type", static_cast<double>(bpf_map__type(map)));
  out.Set("keySize", bpf_map__key_size(map));
  out.Set("valueSize", bpf_map__value_size(map));
  out.Set("maxEntries", bpf_map__max_entries(map));
  out.Set("fd", bpf_map__fd(map));
  return out;
}

// lookup(key): Buffer, or null when the key is absent.
Napi::Value Map::Lookup(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, true);
  CheckKey(env, info[0]);
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  std::vector<uint8_t> value(bpf_map__value_size(map));
  ResetLibbpfLog();
  int err = bpf_map__lookup_elem(map, key.Data(), key.Length(), value.data(), value.size(), 0);
  if (err == -ENOENT) return env.Null();
  if (err) throw MakeError(env, std::string("lookup in ") + bpf_map__name(map), err);
  return Napi::Buffer<uint8_t>::Copy(env, value.data(), value.size());
}

// update(key, value, flags = BPF_ANY)
Napi::Value Map::Update(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, true);
  CheckKey(env, info[0]);
  if (info.Length() < 2 || !info[1].IsBuffer()) throw Napi::TypeError::New(env, "value must be a Buffer");
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  auto value = info[1].As<Napi::Buffer<uint8_t>>();
  if (value.Length() != bpf_map__value_size(map)) {
    throw Napi::RangeError::New(env, std::string(bpf_map__name(map)) + ": value must be " +
                                         std::to_string(bpf_map__value_size(map)) + " bytes");
  }
  uint64_t flags = info.Length() > 2 && info[2].IsNumber() ? info[2].As<Napi::Number>().Int64Value() : static_cast<uint64_t>(BPF_ANY);
  ResetLibbpfLog();
  int err = bpf_map__update_elem(map, key.Data(), key.Length(), value.Data(), value.Length(), flags);
  if (err) throw MakeError(env, std::string("update in ") + bpf_map__name(map), err);
  return env.Undefined();
}

// delete(key): true if the key was present.
Napi::Value Map::Delete(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, true);
  CheckKey(env, info[0]);
  auto key = info[0].As<Napi::Buffer<uint8_t>>();
  ResetLibbpfLog();
  int err = bpf_map__delete_elem(map, key.Data(), key.Length(), 0);
  if (err == -ENOENT) return Napi::Boolean::New(env, false);
  if (err) throw MakeError(env, std::string("delete in ") + bpf_map__name(map), err);
  return Napi::Boolean::New(env, true);
}

// keys(): every key currently in the map (a snapshot; concurrent updates may be missed).
Napi::Value Map::Keys(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, true);
  size_t ks = bpf_map__key_size(map);
  std::vector<uint8_t> cur(ks), next(ks);
  Napi::Array out = Napi::Array::New(env);
  uint32_t n = 0;
  const void* prev = nullptr;
  for (;;) {
    int err = bpf_map__get_next_key(map, prev, next.data(), ks);
    if (err == -ENOENT) break;
    if (err) throw MakeError(env, std::string("iterate ") + bpf_map__name(map), err);
    out.Set(n++, Napi::Buffer<uint8_t>::Copy(env, next.data(), ks));
    cur.swap(next);
    prev = cur.data();
  }
  return out;
}

Napi::Value Map::Pin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, true);
  if (info.Length() < 1 || !info[0].IsString()) throw Napi::TypeError::New(env, "pin(path)");
  std::string path = info[0].As<Napi::String>();
  ResetLibbpfLog();
  int err = bpf_map__pin(map, path.c_str());
  if (err) throw MakeError(env, "pin " + std::string(bpf_map__name(map)) + " at " + path, err);
  return env.Undefined();
}

Napi::Value Map::Unpin(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  bpf_map* map = Checked(env, false);
  if (!bpf_map__is_pinned(map)) return env.Undefined();
  ResetLibbpfLog();
  int err = bpf_map__unpin(map, nullptr);
  if (err) throw MakeError(env, "unpin " + std::string(bpf_map__name(map)), err);
  return env.Undefined();
}

}  // namespace wirekey
