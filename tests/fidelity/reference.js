// Reference MJML (npm package "mjml", pinned in package.json) for the Python tests.
// stdin: JSON [{"id": "...", "mjml": "..."}]; stdout: JSON [{"id", "html", "errors"}], where
// "errors" are the messages of strict validation (empty = valid) and "html" is the soft render.
"use strict";
const mjml2html = require("mjml");

async function renderOne(doc) {
  let errors = [];
  try {
    await mjml2html(doc.mjml, { validationLevel: "strict" });
  } catch (error) {
    errors = (error.errors || [{ formattedMessage: String(error.message) }]).map(
      (e) => e.formattedMessage || e.message,
    );
  }
  const soft = await mjml2html(doc.mjml, { validationLevel: "soft" });
  return { id: doc.id, html: soft.html, errors };
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
