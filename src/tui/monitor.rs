//! The Monitor pane (in progress).

use super::app::App;
use crate::engine::monitor::{Explanation, TurnResult};
use crate::engine::{RequestId, Subject};

impl App {
    pub(super) fn monitor_on_turn(&mut self, _request: RequestId, _key: &str, _result: TurnResult) {}
    pub(super) fn monitor_on_explained(&mut self, _request: RequestId, _key: &str, _e: Explanation) {}
    pub(super) fn monitor_on_error(&mut self, _subject: &Subject, _message: &str) {}
}
