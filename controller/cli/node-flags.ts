/**
 * The Node flags the agent runs with, wherever it is started: the systemd
 * unit (packaging/wirekey.service), the package's /usr/bin/wirekey
 * (scripts/package), bin/wirekey.js's own #! line, and the agents the tests
 * and benches start (test/support/agent.ts). test/unit/node-flags.test.ts
 * checks that each of those says exactly this.
 *
 * --max-semi-space-size=32 (MiB; V8's default is 16): after an agent has
 * served many small requests, V8 keeps its young generation small, and a
 * bulk transfer through the proxy then spent about 3.1 ms of CPU per MiB,
 * against 1.8 with this flag or in a fresh agent (a 256 MiB download or
 * upload after small GETs, npm run bench -- --arms
 * proxy,nginx-same-job,bulk-proxy,bulk-nginx-same-job,bulk-upload-proxy,bulk-upload-nginx-same-job).
 * The agent's peak resident memory in that bench was 165 MB without it and
 * 168 MB with it.
 */
export const AGENT_NODE_FLAGS = ['--max-semi-space-size=32'] as const;
