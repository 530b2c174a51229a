// Bundles src/ into dist/ (one JS and one CSS file, hashed names are not
// needed: the daemon serves them with revalidation).
import { build } from "esbuild";
import { copyFileSync, mkdirSync, rmSync } from "node:fs";

rmSync("dist", { recursive: true, force: true });
mkdirSync("dist/assets", { recursive: true });
await build({
  entryPoints: ["src/main.js"],
  bundle: true,
  minify: true,
  sourcemap: false,
  target: ["es2020"],
  outfile: "dist/assets/app.js",
  loader: { ".css": "css" },
  logLevel: "info",
});
copyFileSync("src/index.html", "dist/index.html");
