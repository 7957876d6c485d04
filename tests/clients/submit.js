// A controller in another language: submits one action through the gateway with Node's
// gRPC (loading the repo's .proto files at run time), prints each event as a JSON line,
// and exits with the action's exit code.
// Usage: node submit.js ADDRESS TOKEN PROTO_ROOT -- COMMAND...
"use strict";
const grpc = require("@grpc/grpc-js");
const loader = require("@grpc/proto-loader");

const [address, token, root] = process.argv.slice(2, 5);
const command = process.argv.slice(process.argv.indexOf("--") + 1);
const definition = loader.loadSync("mesh/v1/gateway.proto", {
  includeDirs: [root], keepCase: true, longs: Number, enums: String, defaults: false,
  oneofs: true,
});
const v1 = grpc.loadPackageDefinition(definition).actionmesh.v1;
const client = new v1.Gateway(address, grpc.credentials.createInsecure());
const metadata = new grpc.Metadata();
metadata.add("authorization", `Bearer ${token}`);

let exitCode = 100;
const call = client.Submit({ action: { command } }, metadata);
call.on("data", (event) => {
  console.log(JSON.stringify(event));
  if (event.event === "result") {
    exitCode = event.result.exit_code ?? 101;
  }
});
call.on("error", (error) => {
  console.error(`${grpc.status[error.code]}: ${error.details}`);
  process.exit(102);
});
call.on("end", () => process.exit(exitCode));
