// prefork demo page: XHR upload with progress, live gallery, WebSocket chat.
// Every piece of user-controlled text goes into the page with textContent or as an
// attribute value set through the DOM, never through innerHTML.
"use strict";

(function () {
  const $ = (selector) => document.querySelector(selector);

  // --- gallery --------------------------------------------------------------------
  const gallery = $("#gallery");

  function formatSize(n) {
    const units = ["bytes", "KiB", "MiB", "GiB"];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
    return i === 0 ? n + " bytes" : n.toFixed(1) + " " + units[i];
  }

  function galleryItem(file) {
    const url = "/files/" + encodeURIComponent(file.name);
    const li = document.createElement("li");
    li.className = "item " + (file.image ? "image" : "file");
    li.dataset.name = file.name;
    const link = document.createElement("a");
    link.href = url;
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = formatSize(file.size);
    if (file.image) {
      const img = document.createElement("img");
      img.src = url;
      img.alt = file.filename;
      link.appendChild(img);
      const caption = document.createElement("span");
      caption.className = "caption";
      caption.textContent = file.filename;
      li.append(link, caption, " ", size);
    } else {
      link.download = file.filename;
      link.textContent = file.filename;
      li.append(link, " ", size);
    }
    return li;
  }

  function addFile(file) {
    for (const li of gallery.children) {
      if (li.dataset.name === file.name) return;
    }
    gallery.prepend(galleryItem(file));
  }

  // --- upload with progress ----------------------------------------------------------
  const form = $("#upload-form");
  const input = $("#file-input");
  const progress = $("#progress");
  const progressText = $("#progress-text");
  const status = $("#upload-status");

  function setProgress(percent) {
    const value = Math.max(0, Math.min(100, Math.round(percent)));
    progress.value = value;
    progressText.textContent = value + " %";
  }

  function setStatus(text, isError) {
    status.textContent = text;
    status.classList.toggle("error", Boolean(isError));
  }

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    if (!input.files.length) { setStatus("Choose a file first.", true); return; }
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("Accept", "application/json");
    xhr.upload.onprogress = (ev) => {
      progress.dataset.events = String(Number(progress.dataset.events) + 1);
      if (ev.lengthComputable) setProgress((ev.loaded / ev.total) * 100);
    };
    xhr.upload.onload = () => setProgress(100);
    xhr.onload = () => {
      if (xhr.status === 201) {
        const answer = JSON.parse(xhr.responseText);
        answer.files.forEach(addFile);
        setProgress(100);
        setStatus("Uploaded " + answer.files.length + " file(s).", false);
        form.reset();
      } else {
        setStatus("Upload failed: " + xhr.status + " " + xhr.responseText.slice(0, 200), true);
      }
      $("#upload-button").disabled = false;
    };
    xhr.onerror = () => {
      setStatus("Upload failed: connection error.", true);
      $("#upload-button").disabled = false;
    };
    setProgress(0);
    setStatus("Uploading…", false);
    $("#upload-button").disabled = true;
    xhr.send(new FormData(form));
  });

  // --- chat -------------------------------------------------------------------------------
  const log = $("#chat-log");
  const chatStatus = $("#chat-status");
  const chatForm = $("#chat-form");
  const chatInput = $("#chat-input");
  const chatName = $("#chat-name");
  const sendButton = $("#chat-send");
  const seen = new Set();
  const MAX_LINES = 300;
  let socket = null;
  let retry = 500;

  chatName.value = localStorage.getItem("prefork-name") || "guest-" + Math.random().toString(16).slice(2, 6);
  chatName.addEventListener("change", () => localStorage.setItem("prefork-name", chatName.value));

  function chatLine(message) {
    const li = document.createElement("li");
    li.dataset.id = message.id;
    const who = document.createElement("span");
    who.className = "who";
    who.textContent = message.name;
    const text = document.createElement("span");
    text.className = "text";
    text.textContent = message.text;
    const time = document.createElement("time");
    const when = new Date(message.ts * 1000);
    time.dateTime = when.toISOString();
    time.textContent = when.toLocaleTimeString();
    li.append(who, text, time);
    return li;
  }

  function trim() {
    while (log.children.length > MAX_LINES) log.firstElementChild.remove();
  }

  function showHistory(messages) {
    // History may arrive after a live message (or again after a reconnect): skip what is
    // shown, and put older messages before the live ones.
    const fragment = document.createDocumentFragment();
    for (const message of messages) {
      if (seen.has(message.id)) continue;
      seen.add(message.id);
      fragment.appendChild(chatLine(message));
    }
    log.prepend(fragment);
    trim();
    log.scrollTop = log.scrollHeight;
  }

  function showMessage(message) {
    if (seen.has(message.id)) return;
    seen.add(message.id);
    log.appendChild(chatLine(message));
    trim();
    log.scrollTop = log.scrollHeight;
  }

  function setOnline(online) {
    chatStatus.textContent = online ? "online" : "offline";
    chatStatus.classList.toggle("online", online);
    sendButton.disabled = !online;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss://" : "ws://";
    socket = new WebSocket(scheme + location.host + "/ws/chat");
    socket.onopen = () => { retry = 500; setOnline(true); };
    socket.onmessage = (event) => {
      let data;
      try { data = JSON.parse(event.data); } catch (e) { return; }
      if (data.type === "history") showHistory(data.messages);
      else if (data.type === "message") showMessage(data);
      else if (data.type === "upload") addFile(data.file);
    };
    socket.onclose = () => {
      setOnline(false);
      setTimeout(connect, retry);
      retry = Math.min(retry * 2, 10000);
    };
  }

  chatForm.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = chatInput.value.trim();
    if (!text || !socket || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ name: chatName.value, text: text }));
    chatInput.value = "";
  });

  connect();
})();
