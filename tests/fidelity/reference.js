// Reference MJML (npm package "mjml", pinned in package.json) for the Python tests.
// stdin: JSON [{"id": "...", "mjml": "...", "filePath"?: "...", "includePath"?: "..."}];
// stdout: JSON [{"id", "html", "errors", "problems"}], where "errors" are the messages of strict
// validation (empty = valid), "problems" the same as {line, tagName, message}, and "html" is the
// soft render. With "filePath" (the file the document is read from), mj-include is honoured as
// the mjml CLI does, resolved relative to that file and allowed inside "includePath".
"use strict";
const mjml2html = require("mjml");

async function renderOne(doc) {
  const files = doc.filePath
    ? { filePath: doc.filePath, includePath: doc.includePath, ignoreIncludes: false }
    : {};
  let errors = [];
  let problems = [];
  try {
    await mjml2html(doc.mjml, { validationLevel: "strict", ...files });
  } catch (error) {
    const list = error.errors || [{ formattedMessage: String(error.message) }];
    errors = list.map((e) => e.formattedMessage || e.message);
    problems = list.map((e) => ({ line: e.line, tagName: e.tagName, message: e.message }));
  }
  const soft = await mjml2html(doc.mjml, { validationLevel: "soft", ...files });
  return { id: doc.id, html: soft.html, errors, problems };
}

async function main() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const docs = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  const results = [];
  for (const doc of docs) results.push(await renderOne(doc));
  process.stdout.write(JSON.stringify(results));
}

main().catch((error) => {
  process.stderr.write(String(error && error.stack ? error.stack : error));
  process.exit(1);
});
