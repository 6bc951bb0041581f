/* Regent — version uploads with progress, and the live "verifying" status.
   Enhancement only: every form here also works as a plain POST without this file.
   Loaded with `defer` (CSP: script-src 'self', no inline scripts). Files go to the REST API
   (PUT /api/v1/models/{name}/versions/{v}/files/{path}) with the session cookie and the CSRF
   header; each is hashed in the browser first (SHA-256, files under 512 MiB) so the server can
   refuse bytes that changed on the way. */
"use strict";

(function () {
  var HASH_LIMIT = 512 * 1024 * 1024; // hashing reads the whole file into memory
  var CONCURRENCY = 3;
  var RETRIES = 2; // after a network error or a 5xx; nothing stays on the server from a failure
  var RETRY_DELAY_MS = 1500;
  var POLL_MS = 2000;
  var TEXT_EVERY_MS = 1000; // how often the spoken progress text may change
  var UNITS = ["bytes", "kB", "MB", "GB", "TB", "PB"];

  /* ---- Helpers ----------------------------------------------------------------------- */

  // The largest power of 1000 not above `size` (a loop: Math.log rounds 1e6 down to 999.9…).
  function exponentOf(size) {
    var exponent = 0;
    while (exponent < UNITS.length - 1 && size >= Math.pow(1000, exponent + 1)) {
      exponent += 1;
    }
    return exponent;
  }

  // Decimal units, the same as the `filesize` template filter: "12.3 MB".
  function formatBytes(size) {
    if (size < 1000) {
      return size === 1 ? "1 byte" : size + " bytes";
    }
    var exponent = exponentOf(size);
    return (size / Math.pow(1000, exponent)).toFixed(1) + " " + UNITS[exponent];
  }

  // "12.3 of 40.0 MB": one unit for both numbers, chosen by the total.
  function formatProgress(done, total) {
    if (total < 1000) {
      return done + " of " + total + " bytes";
    }
    var exponent = exponentOf(total);
    var scale = Math.pow(1000, exponent);
    return (done / scale).toFixed(1) + " of " + (total / scale).toFixed(1) + " " + UNITS[exponent];
  }

  function csrfToken(form) {
    var match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) {
      return decodeURIComponent(match[1]);
    }
    var input = form && form.querySelector("input[name=csrfmiddlewaretoken]");
    return input ? input.value : "";
  }

  function encodePath(path) {
    return path.split("/").map(encodeURIComponent).join("/");
  }

  function element(tag, className, text) {
    var node = document.createElement(tag);
    if (className) {
      node.className = className;
    }
    if (text !== undefined) {
      node.textContent = text;
    }
    return node;
  }

  function toHex(buffer) {
    return Array.prototype.map
      .call(new Uint8Array(buffer), function (byte) {
        return ("0" + byte.toString(16)).slice(-2);
      })
      .join("");
  }

  // One hash at a time, so at most one file sits in memory whatever the upload concurrency.
  var hashChain = Promise.resolve();

  function sha256(file) {
    var subtle = window.crypto && window.crypto.subtle; // only in secure contexts
    if (!subtle || file.size >= HASH_LIMIT || typeof file.arrayBuffer !== "function") {
      return Promise.resolve(null);
    }
    var result = hashChain.then(function () {
      return file
        .arrayBuffer()
        .then(function (buffer) {
          return subtle.digest("SHA-256", buffer);
        })
        .then(toHex);
    });
    hashChain = result.catch(function () {
      return null;
    });
    return result.catch(function () {
      return null; // no claim: the server still computes and stores its own hash
    });
  }

  function errorMessage(xhrOrResponseText, status) {
    try {
      var body = JSON.parse(xhrOrResponseText);
      if (body && body.error && body.error.message) {
        return body.error.message;
      }
    } catch (error) {
      /* not JSON */
    }
    return status ? "the server answered " + status : "the connection failed";
  }

  function failure(message, retryable) {
    var error = new Error(message);
    error.retryable = retryable;
    return error;
  }

  function delay(ms) {
    return new Promise(function (resolve) {
      window.setTimeout(resolve, ms);
    });
  }

  function putFile(url, file, digest, token, onProgress) {
    return new Promise(function (resolve, reject) {
      var xhr = new XMLHttpRequest();
      xhr.open("PUT", url);
      xhr.setRequestHeader("X-CSRFToken", token);
      xhr.setRequestHeader("Content-Type", "application/octet-stream");
      if (digest) {
        xhr.setRequestHeader("X-Content-SHA256", digest);
      }
      xhr.upload.addEventListener("progress", function (event) {
        onProgress(event.loaded);
      });
      xhr.addEventListener("load", function () {
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress(file.size);
          resolve();
        } else {
          reject(failure(errorMessage(xhr.responseText, xhr.status), xhr.status >= 500));
        }
      });
      xhr.addEventListener("error", function () {
        reject(failure(errorMessage("", 0), true));
      });
      xhr.addEventListener("abort", function () {
        reject(new Error("the upload was cancelled"));
      });
      xhr.send(file);
    });
  }

  /* ---- A queue of files with a progress bar each and one overall ------------------- */

  function Uploader(list, overall) {
    this.list = list; // <ul> for the per-file rows
    this.overall = overall; // {box, bar, text}
    this.items = [];
    this.lastText = 0;
  }

  Uploader.prototype.set = function (entries) {
    this.items = entries.map(function (entry, index) {
      return { file: entry.file, path: entry.path, loaded: 0, index: index };
    });
    this.render();
  };

  Uploader.prototype.totalBytes = function () {
    return this.items.reduce(function (sum, item) {
      return sum + item.file.size;
    }, 0);
  };

  Uploader.prototype.render = function () {
    var list = this.list;
    list.textContent = "";
    this.items.forEach(function (item) {
      var id = "upload-file-" + item.index;
      var row = element("li", "file-row");
      var label = element("label", "file-path mono", item.path);
      label.htmlFor = id;
      var size = element("span", "file-size muted", formatBytes(item.file.size));
      var bar = element("progress", "file-bar");
      bar.id = id;
      bar.max = Math.max(item.file.size, 1);
      bar.value = 0;
      var state = element("span", "file-state muted", "waiting");
      row.append(label, size, bar, state);
      list.appendChild(row);
      item.bar = bar;
      item.state = state;
      item.row = row;
    });
  };

  Uploader.prototype.progress = function (item, loaded) {
    item.loaded = loaded;
    item.bar.value = loaded;
    this.refreshOverall(false);
  };

  Uploader.prototype.refreshOverall = function (force) {
    var done = this.items.reduce(function (sum, each) {
      return sum + each.loaded;
    }, 0);
    var total = this.totalBytes();
    this.overall.bar.max = Math.max(total, 1);
    this.overall.bar.value = done;
    var now = Date.now();
    if (force || done === total || now - this.lastText >= TEXT_EVERY_MS) {
      this.lastText = now;
      this.overall.text.textContent = formatProgress(done, total);
    }
  };

  Uploader.prototype.mark = function (item, text, kind) {
    item.state.textContent = text;
    item.row.classList.remove("is-done", "is-failed", "is-active");
    if (kind) {
      item.row.classList.add(kind);
    }
  };

  // Uploads every file, CONCURRENCY at a time; resolves with the failed items.
  Uploader.prototype.run = function (filesUrl, token) {
    var self = this;
    var next = 0;
    var failed = [];
    this.overall.box.hidden = false;
    this.refreshOverall(true);

    function attempt(item, digest, tries) {
      self.mark(item, tries ? "retrying…" : "uploading…", "is-active");
      var url = filesUrl + encodePath(item.path);
      return putFile(url, item.file, digest, token, function (n) {
        self.progress(item, n);
      }).catch(function (error) {
        if (!error.retryable || tries >= RETRIES) {
          throw error;
        }
        self.progress(item, 0);
        return delay(RETRY_DELAY_MS * (tries + 1)).then(function () {
          return attempt(item, digest, tries + 1);
        });
      });
    }

    function one(item) {
      self.mark(item, item.file.size < HASH_LIMIT ? "hashing…" : "uploading…", "is-active");
      return sha256(item.file)
        .then(function (digest) {
          return attempt(item, digest, 0);
        })
        .then(
          function () {
            self.mark(item, "uploaded", "is-done");
          },
          function (error) {
            item.loaded = 0;
            item.bar.value = 0;
            self.refreshOverall(true);
            self.mark(item, "failed: " + error.message, "is-failed");
            failed.push(item);
          }
        );
    }

    function worker() {
      if (next >= self.items.length) {
        return Promise.resolve();
      }
      var item = self.items[next];
      next += 1;
      return one(item).then(worker);
    }

    var workers = [];
    for (var i = 0; i < Math.min(CONCURRENCY, this.items.length); i += 1) {
      workers.push(worker());
    }
    return Promise.all(workers).then(function () {
      self.refreshOverall(true);
      return failed;
    });
  };

  function overallParts(root) {
    var box = root.querySelector("[data-upload-overall]");
    return box && {
      box: box,
      bar: box.querySelector("progress"),
      text: box.querySelector("[data-overall-text]"),
    };
  }

  function guardNavigation(active) {
    window.onbeforeunload = active
      ? function (event) {
          event.preventDefault();
          event.returnValue = "";
          return "";
        }
      : null;
  }

  function showError(box, message, link) {
    box.textContent = "";
    box.appendChild(element("strong", "", message + " "));
    if (link) {
      var anchor = element("a", "", link.text);
      anchor.href = link.href;
      box.appendChild(anchor);
    }
    box.hidden = false;
    box.focus();
  }

  /* ---- New version page: create, upload, seal, go to the version ------------------ */

  function setupVersionForm(form) {
    var selection = [];
    var uploader = new Uploader(form.querySelector("[data-file-queue]"), overallParts(form));
    var summary = form.querySelector("[data-selected-summary]");
    var clear = form.querySelector("[data-clear-files]");
    var submit = form.querySelector("[data-submit]");
    var errorBox = form.querySelector("[data-upload-error]");
    var busy = false;

    form.querySelectorAll("[data-js-only]").forEach(function (node) {
      node.hidden = false;
    });
    form.querySelectorAll("[data-no-js-note]").forEach(function (node) {
      node.hidden = true;
    });
    errorBox.tabIndex = -1;

    function refresh() {
      var total = selection.reduce(function (sum, entry) {
        return sum + entry.file.size;
      }, 0);
      summary.textContent = selection.length
        ? selection.length + " file" + (selection.length === 1 ? "" : "s") + ", " +
          formatBytes(total) + " — uploaded after the version is created, then it is sealed."
        : "No files selected.";
      clear.hidden = selection.length === 0;
      uploader.set(selection);
      submit.textContent = selection.length ? "Create version and upload" : "Create version";
    }

    function add(input) {
      Array.prototype.forEach.call(input.files, function (file) {
        var path = file.webkitRelativePath || file.name;
        selection = selection.filter(function (entry) {
          return entry.path !== path; // picking the same path again replaces it
        });
        selection.push({ file: file, path: path });
      });
      input.value = "";
      refresh();
    }

    ["#pick-files", "#pick-folder"].forEach(function (selector) {
      var input = form.querySelector(selector);
      input.addEventListener("change", function () {
        add(input);
      });
    });
    clear.addEventListener("click", function () {
      selection = [];
      refresh();
    });

    // While a version is being created and filled, the selection is frozen.
    function lock(locked) {
      form.querySelectorAll("#pick-files, #pick-folder").forEach(function (input) {
        input.disabled = locked;
      });
      clear.hidden = locked || selection.length === 0;
      submit.disabled = locked;
      busy = locked;
    }

    function replaceMetadata(html) {
      var page = new DOMParser().parseFromString(html, "text/html");
      var fresh = page.getElementById("version-metadata");
      var current = document.getElementById("version-metadata");
      if (!fresh || !current) {
        return false;
      }
      current.replaceWith(document.importNode(fresh, true));
      var invalid = document.querySelector(
        "#version-metadata .field-invalid textarea, #version-metadata .field-invalid input"
      );
      var errors = document.querySelector("#version-metadata .errorlist");
      if (invalid) {
        invalid.focus();
      } else if (errors) {
        errors.scrollIntoView({ block: "center" });
      }
      return true;
    }

    function seal(created, token) {
      return fetch(created.seal_url, {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRFToken": token, Accept: "application/json" },
      }).then(function (response) {
        if (response.ok) {
          return null;
        }
        return response.text().then(function (text) {
          return "sealing failed: " + errorMessage(text, response.status);
        });
      });
    }

    // After the version exists: upload, seal, go there. Never unlocks the form: sending it
    // again would create a second version.
    function finish(created) {
      var token = csrfToken(form);
      var link = { href: created.url, text: "Open version " + created.version };
      function stop(message) {
        guardNavigation(false);
        showError(errorBox, "Version " + created.version + " was created, but " + message +
          ". It stays pending: add the missing files on its page, then seal it.", link);
      }
      if (!selection.length) {
        window.location.assign(created.url);
        return Promise.resolve();
      }
      return uploader
        .run(created.files_url, token)
        .then(function (failed) {
          if (failed.length) {
            return failed.length + " file" + (failed.length === 1 ? "" : "s") + " did not upload";
          }
          return seal(created, token);
        })
        .then(function (problem) {
          if (problem) {
            stop(problem);
          } else {
            guardNavigation(false);
            window.location.assign(created.url);
          }
        })
        .catch(function (error) {
          stop(error.message);
        });
    }

    form.addEventListener("submit", function (event) {
      event.preventDefault();
      if (busy) {
        return;
      }
      lock(true);
      errorBox.hidden = true;
      guardNavigation(selection.length > 0);
      fetch(form.action, {
        method: "POST",
        body: new FormData(form),
        credentials: "same-origin",
        headers: { Accept: "application/json", "X-CSRFToken": csrfToken(form) },
      }).then(
        function (response) {
          if (response.status === 201) {
            return response.json().then(finish);
          }
          return response.text().then(function (text) {
            guardNavigation(false);
            lock(false);
            if (response.status !== 400 || !replaceMetadata(text)) {
              showError(errorBox, "The version was not created: " +
                errorMessage(text, response.status) + ".");
            }
          });
        },
        function (error) {
          // No answer: most likely nothing was created, but the model's versions tell for sure.
          guardNavigation(false);
          lock(false);
          showError(errorBox, "The server could not be reached (" + error.message + "). " +
            "Check the model's versions before sending the form again.");
        }
      );
    });
  }

  /* ---- Version page: the fallback upload form, with progress when JS runs -------- */

  function setupUploadForm(form) {
    var input = form.querySelector("input[type=file]");
    var pathInput = form.querySelector("input[name=path]");
    var box = form.querySelector("[data-upload-progress]");
    if (!input || !box) {
      return;
    }
    box.appendChild(element("ul", "file-queue"));
    var overall = element("div", "upload-overall");
    overall.hidden = true;
    overall.setAttribute("data-upload-overall", "");
    var label = element("label", "", "Overall");
    label.htmlFor = "fallback-overall";
    var bar = element("progress");
    bar.id = "fallback-overall";
    var text = element("span");
    text.setAttribute("role", "status");
    text.setAttribute("aria-live", "polite");
    overall.append(label, bar, text);
    box.appendChild(overall);
    var errorBox = element("div", "alert alert-error");
    errorBox.hidden = true;
    errorBox.tabIndex = -1;
    errorBox.setAttribute("role", "alert");
    box.appendChild(errorBox);
    var uploader = new Uploader(box.querySelector("ul"), { box: overall, bar: bar, text: text });

    form.addEventListener("submit", function (event) {
      var files = Array.prototype.slice.call(input.files || []);
      var single = pathInput && pathInput.value.trim();
      if (!files.length || (single && files.length > 1)) {
        return; // let the server explain what is wrong
      }
      event.preventDefault();
      box.hidden = false;
      form.querySelector("button[type=submit]").disabled = true;
      uploader.set(files.map(function (file) {
        return { file: file, path: single || file.webkitRelativePath || file.name };
      }));
      guardNavigation(true);
      uploader.run(form.dataset.filesUrl, csrfToken(form)).then(function (failed) {
        guardNavigation(false);
        if (failed.length) {
          form.querySelector("button[type=submit]").disabled = false;
          var total = uploader.items.length;
          var summary = failed.length === total
            ? (total === 1 ? "The file did not upload" : "No file was uploaded")
            : failed.length + " of " + total + " files did not upload";
          showError(errorBox, summary + ": the reason is next to each file.", {
            href: window.location.pathname,
            text: "Reload to see the files",
          });
          return;
        }
        window.location.assign(window.location.pathname);
      });
    });
  }

  /* ---- Version page: follow the checksum worker while the version is verifying ----- */

  function setupStatusPoll(box) {
    var bar = box.querySelector("progress");
    var text = box.querySelector("[data-bytes-total]");
    var delay = POLL_MS;

    function poll() {
      fetch(box.dataset.statusUrl, {
        credentials: "same-origin",
        headers: { Accept: "application/json" },
        cache: "no-store",
      })
        .then(function (response) {
          if (!response.ok) {
            throw new Error(String(response.status));
          }
          return response.json();
        })
        .then(function (state) {
          delay = POLL_MS;
          if (state.status !== "verifying") {
            window.location.reload(); // ready or failed: the page shows the verified files
            return;
          }
          bar.max = Math.max(state.bytes_total, 1);
          bar.value = state.bytes_verified;
          text.textContent = "verifying — " + formatProgress(state.bytes_verified, state.bytes_total);
          window.setTimeout(poll, delay);
        })
        .catch(function () {
          delay = Math.min(delay * 2, 30000); // back off while the server is unreachable
          window.setTimeout(poll, delay);
        });
    }

    window.setTimeout(poll, delay);
  }

  document.querySelectorAll("form[data-version-form]").forEach(setupVersionForm);
  document.querySelectorAll("form[data-upload-form]").forEach(setupUploadForm);
  document.querySelectorAll("#version-status[data-status-url]").forEach(setupStatusPoll);
})();
