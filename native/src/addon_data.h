// SPDX-License-Identifier: Apache-2.0
// What the addon keeps per Node environment (the agent's thread and each
// worker thread load it apart): the classes it builds objects of. Nothing
// is static, so a worker's objects are never made from another thread's
// classes, and a worker that ends frees only its own.
#pragma once

#include <napi.h>

namespace wirekey {

struct AddonData {
  Napi::FunctionReference map;
  Napi::FunctionReference link;

  // Set by Init for the environment loading the addon; freed with it.
  static AddonData* Of(Napi::Env env) { return env.GetInstanceData<AddonData>(); }
};

}  // namespace wirekey
