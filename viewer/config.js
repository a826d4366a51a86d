// The one API this viewer calls, and so the only server the user's token is ever sent to.
// "" is the origin that serves the page (the local stack's front serves both). Firebase Hosting
// serves the page on another origin: docs/deploy.md ("Results viewer") writes the stack's ApiUrl
// here at deploy time, e.g. { api: "https://abc123.execute-api.eu-west-1.amazonaws.com/" }, and the
// same origin into firebase.json's Content-Security-Policy (connect-src). A link's ?api= cannot
// change it: the page refuses a link that names another API.
window.ICHSEG_VIEWER_CONFIG = Object.freeze({ api: "" });
