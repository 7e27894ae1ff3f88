// Node's own fetch as a workload: GETs each URL in order (one keep-alive
// connection pool) and prints "status body" per response.
for (const url of process.argv.slice(2)) {
  const res = await fetch(url);
  process.stdout.write(`${res.status} ${await res.text()}\n`);
}
