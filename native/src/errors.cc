// SPDX-License-Identifier: Apache-2.0
#include "errors.h"

#include <bpf/libbpf.h>

#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <string>
#include <algorithm>

namespace wirekey {
namespace {

// libbpf prints on the thread that made the call: each JavaScript thread
// (the agent's, a worker's) captures its own calls' messages.
thread_local std::string g_log;
constexpr size_t kMaxLog = 1 << 20;

// A message is kept whole (libbpf prints a refused program's verifier log
// as one message), up to kMaxLog for the whole call.
int PrintCallback(enum libbpf_print_level level, const char* fmt, va_list args) {
  if (level == LIBBPF_DEBUG) return 0;
  va_list again;
  va_copy(again, args);
  char line[4096];
  int n = vsnprintf(line, sizeof(line), fmt, args);
  if (n > 0 && g_log.size() < kMaxLog) {
    if (static_cast<size_t>(n) < sizeof(line)) {
      g_log.append(line, n);
    } else {
      size_t keep = std::min<size_t>(n, kMaxLog - g_log.size());
      std::string whole(static_cast<size_t>(n) + 1, '\0');
      vsnprintf(whole.data(), whole.size(), fmt, again);
      g_log.append(whole.data(), keep);
    }
  }
  va_end(again);
  return n;
}

std::string VerifierLog(const std::string& log) {
  const std::string begin = "-- BEGIN PROG LOAD LOG --";
  const std::string end = "-- END PROG LOAD LOG --";
  auto b = log.find(begin);
  if (b == std::string::npos) return "";
  auto e = log.find(end, b);
  b += begin.size();
  return log.substr(b, e == std::string::npos ? std::string::npos : e - b);
}

}  // namespace

void InstallLibbpfLog() { libbpf_set_print(PrintCallback); }

void ResetLibbpfLog() { g_log.clear(); }

Napi::Error MakeError(Napi::Env env, const std::string& what, int err) {
  if (err < 0) err = -err;
  std::string message = what + ": " + strerror(err);
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("errno", Napi::Number::New(env, err));
  if (!g_log.empty()) {
    error.Set("libbpfLog", Napi::String::New(env, g_log));
    std::string verifier = VerifierLog(g_log);
    if (!verifier.empty()) error.Set("verifierLog", Napi::String::New(env, verifier));
  }
  return error;
}

}  // namespace wirekey
