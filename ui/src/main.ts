import { mount } from "svelte";
import App from "./App.svelte";
import "./app.css";
import { HttpBackend } from "./lib/http";
import { setBackend } from "./lib/backend";
import { installLinks } from "./lib/router.svelte";

setBackend(new HttpBackend(""));
installLinks();
mount(App, { target: document.getElementById("app")! });
