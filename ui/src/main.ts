import { mount } from "svelte";
import App from "./App.svelte";
import "./app.css";
import { HttpBackend } from "./lib/http";
import { setBackend } from "./lib/backend";

setBackend(new HttpBackend(""));
mount(App, { target: document.getElementById("app")! });
