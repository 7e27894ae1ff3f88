/**
 * The kernel's capacities that a policy must fit, for the checks that run
 * before anything is loaded. They are values of enums in bpf/wirekey.h and
 * bpf/http.bpf.h; controller/datapath/layout.ts checks each against the
 * compiled object's BTF when it is opened, like the struct layouts.
 */

/** Words of a struct wk_mask; workloads are bits of it (enum wk_limits). */
export const WK_MASK_WORDS = 4;
/** Workloads the kernel can tell apart: ids 1..WK_MAX_WORKLOADS (enum wk_limits); the policy's limit. */
export const WK_MAX_WORKLOADS = WK_MASK_WORDS * 64;
/** Longest host name a plaintext service may list (WK_HTTP_HOST_MAX): a DNS name. */
export const WK_HTTP_HOST_MAX = 253;
/** (service, host) pairs the kernel holds, all services together (WK_HTTP_MAX_HOSTS). */
export const WK_HTTP_MAX_HOSTS = 4096;
