// Dumps reference MJML's validation rules (npm "mjml", pinned in package.json) as JSON on stdout:
// each component's allowed attributes with their types, the children it accepts, whether its content
// is raw (an "ending tag"), and the colour names of the Color type. The Python validator
// (worker/editions/mjml_rules.py) reads the committed copy, worker/editions/mjml_rules.json;
// tests/test_mjml_validation.py fails when the two drift apart.
"use strict";
require("mjml"); // registers the core components
const core = require("mjml-core");
const { dependencies } = require("mjml-validator");
const colors = require("mjml-core/lib/types/helpers/colors");

const components = {};
for (const name of Object.keys(core.components).sort()) {
  const Component = core.components[name];
  components[name] = {
    attributes: Component.allowedAttributes || {},
    children: (dependencies[name] || []).map((dep) =>
      dep instanceof RegExp ? { regex: dep.source } : dep,
    ),
    ending: Boolean(Component.endingTag),
  };
}
const version = require("mjml/package.json").version;
const rules = { mjml: version, components, colors: colors.default || colors };
process.stdout.write(JSON.stringify(rules, null, 1) + "\n");
