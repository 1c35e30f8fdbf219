"use strict";(self.rspackChunksymphony_workbench=self.rspackChunksymphony_workbench||[]).push([[700],{641(o,e,t){var r=t(384),n=t.n(r),p=t(721),a=(t.n(p))()(n());a.push([o.id,`/* Symphony Workbench sidebar and status-bar item: JupyterLab's own theme variables only. */

.jp-Symphony-panel {
  background: var(--jp-layout-color1);
  color: var(--jp-ui-font-color1);
  font-size: var(--jp-ui-font-size1);
  overflow-y: auto;
  padding: 4px 8px 12px;
}

.jp-Symphony-header {
  display: flex;
  align-items: center;
  justify-content: space-between;
}

.jp-Symphony-title {
  font-size: var(--jp-ui-font-size2);
  font-weight: 600;
  margin: 6px 0;
}

.jp-Symphony-state {
  border-radius: 8px;
  padding: 1px 8px;
  background: var(--jp-layout-color3);
  color: var(--jp-ui-inverse-font-color1);
}

.jp-Symphony-state[data-state='running'] {
  background: var(--jp-success-color1);
}

.jp-Symphony-state[data-state='starting'] {
  background: var(--jp-warn-color1);
}

.jp-Symphony-state[data-state='error'] {
  background: var(--jp-error-color1);
}

.jp-Symphony-sectionTitle {
  font-size: var(--jp-ui-font-size1);
  font-weight: 600;
  text-transform: uppercase;
  color: var(--jp-ui-font-color2);
  border-bottom: var(--jp-border-width) solid var(--jp-border-color2);
  margin: 12px 0 4px;
  padding-bottom: 2px;
}

.jp-Symphony-facts {
  display: grid;
  grid-template-columns: max-content 1fr;
  gap: 2px 8px;
  margin: 0;
}

.jp-Symphony-facts dt {
  color: var(--jp-ui-font-color2);
}

.jp-Symphony-facts dd {
  margin: 0;
  font-family: var(--jp-code-font-family);
  overflow-wrap: anywhere;
}

.jp-Symphony-pagesBar {
  height: 6px;
  margin: 6px 0 2px;
  background: var(--jp-layout-color3);
  border-radius: 3px;
  overflow: hidden;
}

.jp-Symphony-pagesUsed {
  height: 100%;
  width: 0;
  background: var(--jp-brand-color1);
  transition: width 0.3s;
}

.jp-Symphony-problem {
  color: var(--jp-error-color1);
  overflow-wrap: anywhere;
}

.jp-Symphony-processTable {
  width: 100%;
  table-layout: fixed;
  border-collapse: collapse;
  font-family: var(--jp-code-font-family);
  font-size: var(--jp-code-font-size);
}

.jp-Symphony-processTable th {
  text-align: left;
  font-weight: 600;
  font-family: var(--jp-ui-font-family);
  font-size: var(--jp-ui-font-size0);
  color: var(--jp-ui-font-color2);
}

.jp-Symphony-processTable th:nth-child(2) {
  width: 92px;
}

.jp-Symphony-processTable th:nth-child(3) {
  width: 40px;
}

.jp-Symphony-processTable td,
.jp-Symphony-processTable th {
  padding: 2px 2px;
  white-space: nowrap;
  overflow: hidden;
  text-overflow: ellipsis;
  vertical-align: top;
}

.jp-Symphony-process td {
  border-top: var(--jp-border-width) solid var(--jp-border-color3);
}

.jp-Symphony-name,
.jp-Symphony-where,
.jp-Symphony-stateCell,
.jp-Symphony-tokens,
.jp-Symphony-cached {
  overflow: hidden;
  text-overflow: ellipsis;
}

.jp-Symphony-where,
.jp-Symphony-tokens,
.jp-Symphony-cached {
  color: var(--jp-ui-font-color2);
  font-size: var(--jp-ui-font-size0);
}

.jp-Symphony-pid::after {
  content: ' \xb7 ';
}

.jp-Symphony-process[data-state='exited'] {
  color: var(--jp-ui-font-color3);
}

.jp-Symphony-kill {
  font-size: var(--jp-ui-font-size0);
  padding: 0 6px;
  height: 18px;
  cursor: pointer;
}

.jp-Symphony-process[data-state='exited'] .jp-Symphony-kill {
  visibility: hidden;
}

.jp-Symphony-kill:disabled {
  cursor: default;
  opacity: 0.4;
}

.jp-Symphony-note {
  color: var(--jp-ui-font-color2);
  margin-top: 2px;
}

.jp-Symphony-tree {
  list-style: none;
  margin: 0;
  padding-left: 12px;
  font-family: var(--jp-code-font-family);
}

.jp-Symphony-panel .jp-Symphony-kvfs > .jp-Symphony-tree {
  padding-left: 0;
}

.jp-Symphony-dirLabel,
.jp-Symphony-file {
  cursor: pointer;
}

.jp-Symphony-dirLabel::before {
  content: '▸ ';
}

.jp-Symphony-dir.jp-mod-open > .jp-Symphony-dirLabel::before {
  content: '▾ ';
}

.jp-Symphony-dir:not(.jp-mod-open) > .jp-Symphony-tree {
  display: none;
}

.jp-Symphony-fileMeta {
  color: var(--jp-ui-font-color2);
  margin-left: 8px;
}

.jp-Symphony-empty {
  color: var(--jp-ui-font-color3);
}

.jp-Symphony-fileInfo {
  margin-top: 6px;
}

.jp-Symphony-statusItem {
  cursor: pointer;
  padding: 0 4px;
}

.jp-Symphony-statusItem[data-state='error'],
.jp-Symphony-statusItem[data-state='unreachable'] {
  color: var(--jp-error-color1);
}
`,""]),t.d(e,{},{A:a})},721(o){o.exports=function(o){var e=[];return e.toString=function(){return this.map(function(e){var t="",r=void 0!==e[5];return e[4]&&(t+="@supports (".concat(e[4],") {")),e[2]&&(t+="@media ".concat(e[2]," {")),r&&(t+="@layer".concat(e[5].length>0?" ".concat(e[5]):""," {")),t+=o(e),r&&(t+="}"),e[2]&&(t+="}"),e[4]&&(t+="}"),t}).join("")},e.i=function(o,t,r,n,p){"string"==typeof o&&(o=[[null,o,void 0]]);var a={};if(r)for(var i=0;i<this.length;i++){var s=this[i][0];null!=s&&(a[s]=!0)}for(var c=0;c<o.length;c++){var l=[].concat(o[c]);r&&a[l[0]]||(void 0!==p&&(void 0===l[5]||(l[1]="@layer".concat(l[5].length>0?" ".concat(l[5]):""," {").concat(l[1],"}")),l[5]=p),t&&(l[2]&&(l[1]="@media ".concat(l[2]," {").concat(l[1],"}")),l[2]=t),n&&(l[4]?(l[1]="@supports (".concat(l[4],") {").concat(l[1],"}"),l[4]=n):l[4]="".concat(n)),e.push(l))}},e}},384(o){o.exports=function(o){return o[1]}},681(o){var e=[];function t(o){for(var t=-1,r=0;r<e.length;r++)if(e[r].identifier===o){t=r;break}return t}function r(o,r){for(var n={},p=[],a=0;a<o.length;a++){var i=o[a],s=r.base?i[0]+r.base:i[0],c=n[s]||0,l="".concat(s," ").concat(c);n[s]=c+1;var y=t(l),d={css:i[1],media:i[2],sourceMap:i[3],supports:i[4],layer:i[5]};if(-1!==y)e[y].references++,e[y].updater(d);else{var h=function(o,e){var t=e.domAPI(e);return t.update(o),function(e){e?(e.css!==o.css||e.media!==o.media||e.sourceMap!==o.sourceMap||e.supports!==o.supports||e.layer!==o.layer)&&t.update(o=e):t.remove()}}(d,r);r.byIndex=a,e.splice(a,0,{identifier:l,updater:h,references:1})}p.push(l)}return p}o.exports=function(o,n){var p=r(o=o||[],n=n||{});return function(o){o=o||[];for(var a=0;a<p.length;a++){var i=t(p[a]);e[i].references--}for(var s=r(o,n),c=0;c<p.length;c++){var l=t(p[c]);0===e[l].references&&(e[l].updater(),e.splice(l,1))}p=s}}},894(o){var e={};o.exports=function(o,t){var r=function(o){if(void 0===e[o]){var t=document.querySelector(o);if(window.HTMLIFrameElement&&t instanceof window.HTMLIFrameElement)try{t=t.contentDocument.head}catch(o){t=null}e[o]=t}return e[o]}(o);if(!r)throw Error("Couldn't find a style target. This probably means that the value for the 'insert' parameter is invalid.");r.appendChild(t)}},101(o){o.exports=function(o){var e=document.createElement("style");return o.setAttributes(e,o.attributes),o.insert(e,o.options),e}},377(o,e,t){o.exports=function(o){var e=t.nc;e&&o.setAttribute("nonce",e)}},102(o){o.exports=function(o){if("u"<typeof document)return{update:function(){},remove:function(){}};var e=o.insertStyleElement(o);return{update:function(t){var r,n,p;r="",t.supports&&(r+="@supports (".concat(t.supports,") {")),t.media&&(r+="@media ".concat(t.media," {")),(n=void 0!==t.layer)&&(r+="@layer".concat(t.layer.length>0?" ".concat(t.layer):""," {")),r+=t.css,n&&(r+="}"),t.media&&(r+="}"),t.supports&&(r+="}"),(p=t.sourceMap)&&"u">typeof btoa&&(r+="\n/*# sourceMappingURL=data:application/json;base64,".concat(btoa(unescape(encodeURIComponent(JSON.stringify(p))))," */")),o.styleTagTransform(r,e,o.options)},remove:function(){var o;null===(o=e).parentNode||o.parentNode.removeChild(o)}}}},842(o){o.exports=function(o,e){if(e.styleSheet)e.styleSheet.cssText=o;else{for(;e.firstChild;)e.removeChild(e.firstChild);e.appendChild(document.createTextNode(o))}}},959(o,e,t){var r=t(681),n=t.n(r),p=t(102),a=t.n(p),i=t(894),s=t.n(i),c=t(377),l=t.n(c),y=t(101),d=t.n(y),h=t(842),u=t.n(h),f=t(641),m={};m.styleTagTransform=u(),m.setAttributes=l(),m.insert=s().bind(null,"head"),m.domAPI=a(),m.insertStyleElement=d(),n()(f.A,m),f.A&&f.A.locals&&f.A.locals}}]);